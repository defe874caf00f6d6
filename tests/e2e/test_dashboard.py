"""/dashboard in headless Chromium, against `atp worker` and `atp api` fed over Kafka."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from atp_service.embedded import EmbeddedStack
from tests.e2e._browser import chromium, why_no_browser
from tests.e2e.conftest import Service, delta, item_site, snapshot

pytestmark = pytest.mark.e2e

_NO_BROWSER = why_no_browser()
if _NO_BROWSER is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=f"browser tests skipped: {_NO_BROWSER}")]

#: How long the page may take to show something: the worker's report (about 1 s), the
#: page's poll (2 s), the fold.
SHOWN_MS = 20_000


def send(stack: EmbeddedStack, topic: str, key: bytes, value: bytes) -> None:
    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    # Playwright's sync API runs an event loop of its own in this thread.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, produce()).result()


def send_event(stack: EmbeddedStack, body: dict[str, Any]) -> None:
    key = f"{body['sku']}@{body['site']}".encode()
    send(stack, f"{body['source']}.inventory.v1", key, json.dumps(body).encode())


@pytest.fixture(scope="module")
def browser(service: Service) -> Iterator[Any]:
    with chromium(viewport={"width": 1280, "height": 900}) as context:
        yield context


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()  # a tab of its own: its own session storage, so no key yet
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert not errors, f"the page raised: {errors}"


def open_dashboard(page: Any, service: Service) -> None:
    page.goto(f"{service.base_url}/dashboard")


def sign_in(page: Any, key: str) -> None:
    page.fill("#key-input", key)
    page.click("#key-submit")


def test_the_page_asks_for_an_admin_key_and_a_wrong_key_gets_a_clear_message(
    page: Any, service: Service
) -> None:
    from playwright.sync_api import expect

    open_dashboard(page, service)
    expect(page.locator("#key-input")).to_be_visible()
    expect(page.locator("#board")).to_be_hidden()

    sign_in(page, "not-a-key-of-this-service")
    error = page.locator("#key-error")
    expect(error).to_be_visible(timeout=SHOWN_MS)
    expect(error).to_contain_text("not known to the service (401)")
    expect(page.locator("#board")).to_be_hidden()

    sign_in(page, service.keys["storefront"])  # a real key, without the admin scope
    expect(error).to_contain_text("does not have the admin scope (403)", timeout=SHOWN_MS)

    sign_in(page, service.keys["admin"])
    expect(page.locator("#board")).to_be_visible(timeout=SHOWN_MS)
    expect(error).to_be_hidden()
    expect(page.locator("#status-text")).to_have_text("live")


def test_the_page_shows_a_folded_sku_and_follows_a_new_delta_by_itself(
    page: Any, service: Service, stack: EmbeddedStack
) -> None:
    from playwright.sync_api import expect

    sku, site = item_site()
    send_event(stack, snapshot("wms", sku, site, {"on_hand": 40, "allocated": 3}))
    open_dashboard(page, service)
    sign_in(page, service.keys["admin"])
    page.fill("#sku-input", sku)
    page.click("#sku-form button")

    row = page.locator(f'#sku-sites-body tr[data-site="{site}"]')
    cells = row.locator("td")
    expect(cells.nth(0)).to_have_text("40", timeout=SHOWN_MS)  # on hand
    expect(cells.nth(1)).to_have_text("3")  # allocated
    expect(row.locator("td.sources")).to_contain_text("wms")  # when the WMS was last heard
    channel = next(iter(service.channels))  # its policy sells from every site
    atp_row = page.locator(f'#sku-atp-body tr[data-channel="{channel}"]')
    expect(atp_row).to_be_visible()
    atp_before = atp_row.locator("td.atp").inner_text()

    send_event(stack, delta("wms", sku, site, "on_hand", 5))  # nothing clicked after this
    expect(cells.nth(0)).to_have_text("45", timeout=SHOWN_MS)
    expect(atp_row.locator("td.atp")).not_to_have_text(atp_before)
    expect(page.locator('#sync-figures [data-source="wms"]')).to_contain_text("s")


def test_the_page_shows_a_dead_letter_after_bad_input(
    page: Any, service: Service, stack: EmbeddedStack
) -> None:
    from playwright.sync_api import expect

    sku, site = item_site()
    open_dashboard(page, service)
    sign_in(page, service.keys["admin"])
    expect(page.locator("#board")).to_be_visible(timeout=SHOWN_MS)

    send(stack, "wms.inventory.v1", f"{sku}@{site}".encode(), b'{"schema": "inventory.delta.v1"')

    letter = page.locator("#dlq-latest li", has_text=f"{sku}@{site}")
    expect(letter).to_be_visible(timeout=SHOWN_MS)
    expect(letter).to_contain_text("malformed_json")
    expect(page.locator('#dlq-codes [data-code="malformed_json"]')).to_be_visible()

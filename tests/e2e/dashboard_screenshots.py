"""`make screenshots`: docs/dashboard-laptop.png and docs/dashboard-phone.png of /dashboard.

Starts `atp up --demo` on free ports (its own work directory), lets the demo run long enough
for the charts to have a history, signs in with the admin key it prints, shows the hottest
sku, takes a full-page screenshot at a laptop's width and at a phone's, then stops the stack.

    .venv/bin/python -m tests.e2e.dashboard_screenshots [--out docs] [--warm-up 40]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from atp_service.embedded import free_ports
from tests.e2e._browser import chromium, why_no_browser

SIZES = {"laptop": (1366, 900), "phone": (390, 844)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--warm-up", type=float, default=40.0, help="seconds of demo first")
    parser.add_argument("--sku", default="SKU-00001")
    args = parser.parse_args()
    if (why := why_no_browser()) is not None:
        print(f"screenshots: {why}", file=sys.stderr)
        return 2
    redis, kafka, api, metrics = free_ports(4)
    with tempfile.TemporaryDirectory(prefix="atp-screens-") as workdir:
        up = subprocess.Popen(
            [sys.executable, "-m", "atp_service", "up", "--demo",
             "--redis-port", str(redis), "--kafka-port", str(kafka), "--api-port", str(api),
             "--worker-metrics-port", str(metrics), "--workdir", workdir],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            admin = _admin_key(up)
            base = f"http://127.0.0.1:{api}"
            with chromium(viewport={"width": 1366, "height": 900}) as browser:
                page = browser.new_page()
                page.goto(f"{base}/dashboard")
                page.fill("#key-input", admin)
                page.click("#key-submit")
                page.wait_for_selector("#board:not([hidden])", timeout=30_000)
                page.fill("#sku-input", args.sku)
                page.click("#sku-form button")
                page.wait_for_selector("#sku-result:not([hidden])", timeout=30_000)
                print(f"screenshots: letting the demo run {args.warm_up:g} s", flush=True)
                time.sleep(args.warm_up)
                args.out.mkdir(parents=True, exist_ok=True)
                for name, (width, height) in SIZES.items():
                    page.set_viewport_size({"width": width, "height": height})
                    time.sleep(2.5)  # a poll, and the charts redrawn at this width
                    path = args.out / f"dashboard-{name}.png"
                    page.screenshot(path=str(path), full_page=True)
                    print(f"screenshots: wrote {path}")
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
    return 0


def _admin_key(up: subprocess.Popen[str], timeout: float = 120.0) -> str:
    assert up.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    for line in up.stdout:
        seen.append(line)
        match = re.search(r"^\s+admin\s+(dev-[0-9a-f]+)", line)
        if match:
            return match.group(1)
        if time.monotonic() > deadline:
            break
    raise SystemExit("screenshots: `atp up` printed no admin key:\n" + "".join(seen[-30:]))


if __name__ == "__main__":
    raise SystemExit(main())

"""The promise planner: which sites, how many units, by which date; by example and by property."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from hypothesis import given
from hypothesis import strategies as st

from atp_service.domain import (
    ChannelPolicy,
    Fulfilment,
    ItemSite,
    ItemSitePosition,
    Promise,
    PromiseLine,
    PromiseRequest,
    SiteAttributes,
    SiteBook,
    Strategy,
    SupplyKind,
    atp_for_site,
    plan_promise,
    site_supply,
)

FRIDAY = date(2026, 12, 4)
MORNING = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
WEB = ChannelPolicy(sites=("DC-EAST", "DC-WEST"), include_in_transit=True)
#: The sites of the contract's example: DC-EAST first by priority, closed on Mondays.
SITES = SiteBook(
    {
        "DC-EAST": SiteAttributes(
            priority=10,
            cutoff=time(15, 0),
            closed_weekdays=frozenset({1}),
            transit_days={"US-EAST": 1, "US-WEST": 1},
        ),
        "DC-WEST": SiteAttributes(
            priority=20,
            handling_days=1,
            cutoff=time(15, 0),
            transit_days={"US-WEST": 1, "US-EAST": 4},
        ),
    }
)


def day(n: int) -> date:
    return FRIDAY + timedelta(days=n)


def stock(on_hand: int = 0, **inbound: int) -> ItemSitePosition:
    """``stock(30, d3=20)``: 30 on hand and 20 due in three days."""
    return ItemSitePosition(
        on_hand=on_hand, in_transit_by_eta={day(int(k[1:])): v for k, v in inbound.items()}
    )


def promise(
    positions: dict[tuple[str, str], ItemSitePosition],
    *lines: PromiseLine,
    policy: ChannelPolicy = WEB,
    sites: SiteBook = SITES,
    ship_to: str | None = "US-WEST",
    strategy: Strategy = Strategy.EARLIEST,
    allow_split: bool = True,
    now: datetime = MORNING,
) -> Promise:
    request = PromiseRequest(
        lines=lines,
        policy=policy,
        channel_sites=policy.sites or tuple(sorted({site for _, site in positions})),
        ship_to=ship_to,
        strategy=strategy,
        allow_split=allow_split,
    )
    found = {ItemSite(sku, site): p for (sku, site), p in positions.items()}
    return plan_promise(request, found, sites, now)


# -- worked examples -----------------------------------------------------------------------------


def test_the_contracts_example_comes_out_as_printed() -> None:
    positions = {
        ("SKU-1", "DC-WEST"): stock(30),
        ("SKU-1", "DC-EAST"): stock(0, d3=20),
        ("SKU-9", "DC-EAST"): stock(5),
    }

    answer = promise(positions, PromiseLine("SKU-1", 50), PromiseLine("SKU-9", 1, site="DC-EAST"))

    sku1, sku9 = answer.lines
    assert (sku1.promised, sku1.shortfall, sku1.delivery_date) == (50, 0, date(2026, 12, 9))
    assert sku1.fulfilments == (
        Fulfilment("DC-WEST", 30, SupplyKind.ON_HAND, None, date(2026, 12, 5), date(2026, 12, 6)),
        Fulfilment(
            "DC-EAST", 20, SupplyKind.IN_TRANSIT, date(2026, 12, 7), date(2026, 12, 8),
            date(2026, 12, 9),
        ),
    )  # fmt: skip
    assert sku9.fulfilments == (
        Fulfilment("DC-EAST", 1, SupplyKind.ON_HAND, None, FRIDAY, date(2026, 12, 5)),
    )
    assert answer.delivery_date == date(2026, 12, 9)


def test_earliest_takes_stock_from_a_later_priority_before_inbound_at_the_first() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(0, d3=10), ("SKU-1", "DC-WEST"): stock(10)}

    (line,) = promise(positions, PromiseLine("SKU-1", 10)).lines

    assert line.allocations() == {"DC-WEST": 10}
    assert line.delivery_date == date(2026, 12, 6)


def test_earliest_prefers_one_site_to_two_that_are_no_sooner() -> None:
    sites = SiteBook({"A": SiteAttributes(priority=1), "B": SiteAttributes(priority=2)})
    positions = {("SKU-1", "A"): stock(6), ("SKU-1", "B"): stock(10)}

    (line,) = promise(
        positions, PromiseLine("SKU-1", 10), policy=ChannelPolicy(), sites=sites, ship_to=None
    ).lines

    assert line.allocations() == {"B": 10}


def test_earliest_among_equally_few_sites_takes_them_in_priority_order() -> None:
    sites = SiteBook({s: SiteAttributes(priority=p) for s, p in (("A", 3), ("B", 1), ("C", 2))})
    positions = {("SKU-1", s): stock(10) for s in "ABC"}

    (line,) = promise(
        positions, PromiseLine("SKU-1", 15), policy=ChannelPolicy(), sites=sites, ship_to=None
    ).lines

    assert line.allocations() == {"B": 10, "C": 5}


def test_priority_takes_each_site_in_turn_even_when_it_is_later() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(4, d3=4), ("SKU-1", "DC-WEST"): stock(10)}

    (line,) = promise(positions, PromiseLine("SKU-1", 10), strategy=Strategy.PRIORITY).lines

    assert [(f.site, f.qty, f.supply) for f in line.fulfilments] == [
        ("DC-EAST", 4, SupplyKind.ON_HAND),
        ("DC-WEST", 2, SupplyKind.ON_HAND),
        ("DC-EAST", 4, SupplyKind.IN_TRANSIT),
    ]
    assert line.delivery_date == date(2026, 12, 9)


def test_fewest_sites_waits_for_inbound_rather_than_splitting() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(5, d3=5), ("SKU-1", "DC-WEST"): stock(5)}

    earliest = promise(positions, PromiseLine("SKU-1", 10)).lines[0]
    fewest = promise(positions, PromiseLine("SKU-1", 10), strategy=Strategy.FEWEST_SITES).lines[0]

    assert earliest.allocations() == {"DC-EAST": 5, "DC-WEST": 5}
    assert earliest.delivery_date == date(2026, 12, 6)
    assert fewest.allocations() == {"DC-EAST": 10}
    assert fewest.delivery_date == date(2026, 12, 9)


def test_without_split_a_line_is_served_whole_from_one_site_or_not_at_all() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(6), ("SKU-1", "DC-WEST"): stock(6)}

    nothing = promise(positions, PromiseLine("SKU-1", 10), allow_split=False).lines[0]
    whole = promise(positions, PromiseLine("SKU-1", 6), allow_split=False).lines[0]

    assert (nothing.promised, nothing.shortfall, nothing.fulfilments) == (0, 10, ())
    assert nothing.delivery_date is None
    assert whole.allocations() == {"DC-EAST": 6}


def test_a_short_line_promises_what_there_is_and_the_promise_has_no_date() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(3), ("SKU-2", "DC-EAST"): stock(9)}

    answer = promise(positions, PromiseLine("SKU-1", 5), PromiseLine("SKU-2", 1))

    assert (answer.lines[0].promised, answer.lines[0].shortfall) == (3, 2)
    assert answer.lines[0].delivery_date == date(2026, 12, 5)
    assert answer.delivery_date is None


def test_a_line_naming_a_site_uses_that_site_alone() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(2), ("SKU-1", "DC-WEST"): stock(50)}

    (line,) = promise(positions, PromiseLine("SKU-1", 5, site="DC-EAST")).lines

    assert line.allocations() == {"DC-EAST": 2}
    assert line.shortfall == 3


def test_a_site_outside_the_channel_or_not_delivering_there_is_never_used() -> None:
    sites = SiteBook(
        {"DC-EAST": SiteAttributes(transit_days={"US-EAST": 1}, default_transit_days=None)}
    )
    positions = {("SKU-1", "DC-EAST"): stock(5), ("SKU-1", "STORE-1"): stock(5)}

    to_west = promise(positions, PromiseLine("SKU-1", 1), sites=sites).lines[0]
    named_outside = promise(positions, PromiseLine("SKU-1", 1, site="STORE-1"), sites=sites)

    assert to_west.promised == 0  # DC-WEST has nothing, DC-EAST does not deliver to US-WEST
    assert named_outside.lines[0].promised == 0  # STORE-1 is not a web site
    assert promise(positions, PromiseLine("SKU-1", 1), sites=sites, ship_to=None).lines[
        0
    ].allocations() == {"DC-EAST": 1}


def test_lines_share_the_supply_in_the_order_given() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(5), ("SKU-1", "DC-WEST"): stock(3)}

    first, second = promise(positions, PromiseLine("SKU-1", 4), PromiseLine("SKU-1", 4)).lines

    assert first.allocations() == {"DC-EAST": 4}
    assert second.allocations() == {"DC-WEST": 3, "DC-EAST": 1}


def test_after_the_cutoff_stock_ships_the_next_shipping_day() -> None:
    positions = {("SKU-1", "DC-EAST"): stock(5)}
    friday_evening = datetime(2026, 12, 4, 16, 0, tzinfo=UTC)
    sunday_evening = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)

    friday = promise(positions, PromiseLine("SKU-1", 1), now=friday_evening).lines[0]
    sunday = promise(positions, PromiseLine("SKU-1", 1), now=sunday_evening).lines[0]

    assert friday.fulfilments[0].ship_date == date(2026, 12, 5)
    assert sunday.fulfilments[0].ship_date == date(2026, 12, 8)  # Monday is closed


def test_overdue_inbound_ships_from_today_and_undated_inbound_is_not_promised() -> None:
    positions = {("SKU-1", "DC-EAST"): ItemSitePosition(in_transit_by_eta={day(-3): 2, None: 40})}

    (line,) = promise(positions, PromiseLine("SKU-1", 10)).lines

    assert line.promised == 2
    assert line.fulfilments[0].eta == day(-3)
    assert line.fulfilments[0].ship_date == FRIDAY


def test_inbound_due_at_the_end_of_the_calendar_is_not_promised_rather_than_overflowing() -> None:
    everything = ChannelPolicy(sites=("DC-EAST",), include_in_transit=True)  # no horizon
    slow = SiteBook(
        {"DC-EAST": SiteAttributes(handling_days=365, closed_weekdays=frozenset(range(1, 7)))}
    )
    positions = {("SKU-1", "DC-EAST"): ItemSitePosition(in_transit_by_eta={date.max: 5, day(1): 1})}

    (line,) = promise(positions, PromiseLine("SKU-1", 6), policy=everything, sites=slow).lines

    assert line.promised == 1


# -- properties ---------------------------------------------------------------------------------

SITE_CODES = ("A", "B", "C")
SKUS = ("S1", "S2")
ZONES = ("EAST", "WEST")


def _eta(n: int | None) -> date | None:
    return None if n is None else day(n)


site_attributes = st.builds(
    SiteAttributes,
    priority=st.integers(min_value=0, max_value=5),
    handling_days=st.integers(min_value=0, max_value=4),
    cutoff=st.one_of(
        st.none(), st.sampled_from([time(h, m) for h in (0, 9, 15, 23) for m in (0, 59)])
    ),
    closed_weekdays=st.frozensets(st.integers(min_value=1, max_value=7), max_size=6),
    transit_days=st.dictionaries(st.sampled_from(ZONES), st.integers(min_value=0, max_value=5)),
    default_transit_days=st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
)
positions_strategy = st.builds(
    ItemSitePosition,
    on_hand=st.integers(min_value=0, max_value=30),
    reserved=st.integers(min_value=0, max_value=10),
    in_transit_by_eta=st.dictionaries(
        st.one_of(st.none(), st.integers(min_value=-3, max_value=20)).map(_eta),
        st.integers(min_value=-5, max_value=20),
        max_size=2,
    ),
)
policies = st.builds(
    ChannelPolicy,
    sites=st.one_of(st.none(), st.lists(st.sampled_from(SITE_CODES), unique=True).map(tuple)),
    safety_stock=st.integers(min_value=0, max_value=3),
    share=st.sampled_from((100, 50)),
    include_in_transit=st.booleans(),
    in_transit_horizon_days=st.integers(min_value=0, max_value=10),
)
lines_strategy = st.lists(
    st.builds(
        PromiseLine,
        sku=st.sampled_from(SKUS),
        qty=st.integers(min_value=1, max_value=60),
        site=st.one_of(st.none(), st.sampled_from(SITE_CODES)),
    ),
    min_size=1,
    max_size=4,
).map(tuple)
nows = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[PromiseRequest, dict[ItemSite, ItemSitePosition], SiteBook, datetime]:
    policy = draw(policies)
    request = PromiseRequest(
        lines=draw(lines_strategy),
        policy=policy,
        channel_sites=policy.sites if policy.sites is not None else SITE_CODES,
        ship_to=draw(st.one_of(st.none(), st.sampled_from(ZONES))),
        strategy=draw(st.sampled_from(Strategy)),
        allow_split=draw(st.booleans()),
    )
    positions = {
        ItemSite(sku, site): draw(positions_strategy) for sku in SKUS for site in SITE_CODES
    }
    sites = SiteBook({s: draw(site_attributes) for s in SITE_CODES if draw(st.booleans())})
    return request, positions, sites, draw(nows)


Scenario = tuple[PromiseRequest, dict[ItemSite, ItemSitePosition], SiteBook, datetime]


@given(scenarios())
def test_no_item_site_is_promised_more_than_its_supply_over_all_lines(scenario: Scenario) -> None:
    request, positions, sites, now = scenario

    answer = plan_promise(request, positions, sites, now)

    taken: dict[ItemSite, int] = {}
    for line in answer.lines:
        for f in line.fulfilments:
            item = ItemSite(line.line.sku, f.site)
            taken[item] = taken.get(item, 0) + f.qty
    for item, qty in taken.items():
        supply = site_supply(positions[item], request.policy, now.date())
        assert qty <= sum(lot.qty for lot in supply)
        assert qty <= atp_for_site(positions[item], request.policy, now.date())


@given(scenarios())
def test_only_the_channels_sites_that_deliver_to_the_ship_to_are_used(scenario: Scenario) -> None:
    request, positions, sites, now = scenario

    answer = plan_promise(request, positions, sites, now)

    for line in answer.lines:
        assert 0 <= line.promised <= line.line.qty
        assert line.promised == sum(f.qty for f in line.fulfilments)
        assert line.shortfall == line.line.qty - line.promised
        for f in line.fulfilments:
            assert f.qty > 0
            assert request.policy.sells_from(f.site)
            assert f.site in (
                request.channel_sites if line.line.site is None else (line.line.site,)
            )
            assert sites.of(f.site).delivers_to(request.ship_to)


@given(scenarios())
def test_without_split_each_line_is_whole_from_one_site_or_nothing(scenario: Scenario) -> None:
    request, positions, sites, now = scenario
    request = PromiseRequest(
        request.lines, request.policy, request.channel_sites, request.ship_to,
        request.strategy, allow_split=False,
    )  # fmt: skip

    answer = plan_promise(request, positions, sites, now)

    for line in answer.lines:
        assert len(line.allocations()) <= 1
        assert line.promised in (0, line.line.qty)


@given(scenarios())
def test_earliest_is_never_later_than_priority_or_fewest_sites(scenario: Scenario) -> None:
    request, positions, sites, now = scenario
    first_line = request.lines[:1]  # later lines depend on what earlier ones took

    def line_with(strategy: Strategy) -> tuple[int, date | None]:
        asked = PromiseRequest(
            first_line, request.policy, request.channel_sites, request.ship_to, strategy,
            request.allow_split,
        )  # fmt: skip
        (line,) = plan_promise(asked, positions, sites, now).lines
        return line.promised, line.delivery_date

    earliest_qty, earliest = line_with(Strategy.EARLIEST)
    for other in (Strategy.PRIORITY, Strategy.FEWEST_SITES):
        qty, when = line_with(other)
        assert qty == earliest_qty  # every strategy promises as much as it can
        if when is not None:
            assert earliest is not None and earliest <= when


@given(scenarios())
def test_dates_respect_the_cutoff_the_handling_days_the_closed_days_and_transit(
    scenario: Scenario,
) -> None:
    request, positions, sites, now = scenario

    answer = plan_promise(request, positions, sites, now)

    for line in answer.lines:
        for f in line.fulfilments:
            site = sites.of(f.site)
            after_cutoff = site.cutoff is not None and now.time() > site.cutoff
            released = now.date() + timedelta(days=1 if after_cutoff else 0)
            start = max(released, f.eta) if f.eta is not None else released
            shipping_days = [
                start + timedelta(days=n)
                for n in range((f.ship_date - start).days + 1)
                if (start + timedelta(days=n)).isoweekday() not in site.closed_weekdays
            ]
            assert f.ship_date >= start
            assert f.ship_date.isoweekday() not in site.closed_weekdays
            assert len(shipping_days) == site.handling_days + 1  # the release day, then handling
            transit = site.transit_to(request.ship_to)
            assert transit is not None
            assert f.delivery_date == f.ship_date + timedelta(days=transit)
            assert (f.eta is None) == (f.supply is SupplyKind.ON_HAND)

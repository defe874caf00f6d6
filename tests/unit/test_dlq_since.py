"""`atp dlq --since`: what people type for "from then on", or a message saying what it reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from atp_service.dlq import parse_since

NOW = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T10:00Z", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("2026-12-01T10:00:30+01:00", datetime(2026, 12, 1, 9, 0, 30, tzinfo=UTC)),
        ("2026-12-01 10:00", datetime(2026, 12, 1, 10, tzinfo=UTC)),
        ("1h", NOW - timedelta(hours=1)),
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2d", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1.5 hours ago", NOW - timedelta(minutes=90)),
        ("today", datetime(2026, 12, 4, tzinfo=UTC)),
        ("yesterday", datetime(2026, 12, 3, tzinfo=UTC)),
        ("now", NOW),
    ],
)
def test_dates_times_spans_and_words_are_read(text: str, meant: datetime) -> None:
    assert parse_since(text, NOW) == meant


@pytest.mark.parametrize("text", ["last tuesday", "1 fortnight", "12/01/2026", ""])
def test_anything_else_is_refused_naming_what_is_read(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_since(text, NOW)
    message = str(info.value)
    for form in ("2026-12-01", "2026-12-01T10:00Z", "1h", "yesterday"):
        assert form in message

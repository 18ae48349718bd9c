"""Next-firing computation for every kind of rule, from explicit instants (never the clock)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from dispatcher.scheduling.rules import (
    OCCASIONS,
    BirthdayRule,
    birthday_audience,
    firing_variables,
    firings,
    lunar_year_name,
    next_after,
    parse,
)


def vn(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    """A Vietnam-time instant (UTC+7 all year), as UTC."""
    return datetime(y, m, d, hh, mm, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh")).astimezone(UTC)


def test_cron_in_vietnam_time() -> None:
    rule = parse({"type": "cron", "cron": "0 7 * * 1"})  # Mondays 07:00
    after = vn(2026, 11, 24, 12)  # a Tuesday
    assert next_after(rule, after) == vn(2026, 11, 30, 7)
    assert next_after(rule, vn(2026, 11, 30, 7)) == vn(2026, 12, 7, 7), "strictly after"
    other = parse({"type": "cron", "cron": "0 9 1 * *", "timezone": "Europe/Paris"})
    assert next_after(other, datetime(2026, 7, 15, tzinfo=UTC)) == datetime(
        2026, 8, 1, 7, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("year", "tet"),
    [(2025, (1, 29)), (2026, (2, 17)), (2027, (2, 6)), (2028, (1, 26)), (2030, (2, 2))],
)
def test_tet_fires_on_the_vietnamese_new_year_at_the_chosen_hour(
    year: int, tet: tuple[int, int]
) -> None:
    rule = parse({"type": "occasion", "occasion": "tet", "at": "07:30"})
    assert next_after(rule, vn(year - 1, 12, 1)) == vn(year, *tet, 7, 30)


def test_three_days_before_tet_and_the_lunar_year_it_announces() -> None:
    rule = parse({"type": "lunar", "month": 1, "day": 1, "offset_days": -3, "at": "08:00"})
    slot = next_after(rule, vn(2026, 11, 24))
    assert slot == vn(2027, 2, 3, 8)
    occasion = parse({"type": "occasion", "occasion": "tet", "offset_days": -3})
    variables = firing_variables(occasion, next_after(occasion, vn(2026, 11, 24)))
    assert variables["lunar_year_name"] == "Đinh Mùi"
    assert variables["year"] == "2027"


def test_hung_kings_day_is_the_tenth_of_the_third_lunar_month() -> None:
    rule = parse({"type": "occasion", "occasion": "hung_kings"})
    assert next_after(rule, vn(2024, 1, 1)) == vn(2024, 4, 18, 7)
    assert next_after(rule, vn(2025, 1, 1)) == vn(2025, 4, 7, 7)


def test_solar_occasions_and_a_year_of_firings() -> None:
    national_day = parse({"type": "occasion", "occasion": "national_day", "at": "06:00"})
    assert next_after(national_day, vn(2026, 9, 2, 6)) == vn(2027, 9, 2, 6)
    every = {key: parse({"type": "occasion", "occasion": key}) for key in OCCASIONS}
    year = {
        key: firings(rule, vn(2026, 12, 31, 8), vn(2027, 12, 31, 8)) for key, rule in every.items()
    }
    assert all(len(slots) == 1 for slots in year.values()), year
    assert year["vss_founding"] == [vn(2027, 2, 16, 7)]
    assert year["health_insurance_day"] == [vn(2027, 7, 1, 7)]
    assert year["reunification_day"] == [vn(2027, 4, 30, 7)]


def test_birthday_runs_daily_and_greets_29_february_on_28_february_in_common_years() -> None:
    rule = parse({"type": "birthday", "at": "08:00"})
    assert isinstance(rule, BirthdayRule)
    assert rule.at == time(8, 0)
    assert next_after(rule, vn(2027, 2, 27, 9)) == vn(2027, 2, 28, 8)
    assert birthday_audience(rule, vn(2027, 2, 28, 8)) == {"born_on": ["02-28", "02-29"]}
    assert birthday_audience(rule, vn(2028, 2, 28, 8)) == {"born_on": ["02-28"]}
    assert birthday_audience(rule, vn(2028, 2, 29, 8)) == {"born_on": ["02-29"]}
    # The day is Vietnam's, not UTC's: 06:00 on 1 March in Vietnam is 28 February in UTC.
    assert birthday_audience(rule, vn(2027, 3, 1, 6)) == {"born_on": ["03-01"]}
    assert birthday_audience(rule, vn(2027, 3, 1, 8)) == {"born_on": ["03-01"]}


def test_lunar_year_names() -> None:
    assert [lunar_year_name(y) for y in (2024, 2025, 2026, 2027)] == [
        "Giáp Thìn",
        "Ất Tỵ",
        "Bính Ngọ",
        "Đinh Mùi",
    ]


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"type": "cron", "cron": "every day"}, "cron"),
        ({"type": "cron", "cron": "0 7 * * * *"}, "should match pattern"),
        ({"type": "lunar", "month": 13, "day": 1}, "month"),
        ({"type": "lunar", "month": 1, "day": 31}, "day"),
        ({"type": "occasion", "occasion": "christmas"}, "unknown occasion"),
        ({"type": "birthday", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"type": "weekly"}, "type"),
    ],
)
def test_bad_rules_say_what_is_wrong(rule: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(rule)
    assert needle in str(caught.value)

"""Tests for the Vietnamese lunar calendar converter against published dates."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from dispatcher.scheduling.lunar import (
    CHINA_TZ,
    MAX_YEAR,
    MIN_YEAR,
    LunarDate,
    leap_month,
    month_length,
    next_occurrence,
    tet,
    to_lunar,
    to_solar,
)

# Published dates of Tết Nguyên Đán in Vietnam since the 1967 calendar reform (UTC+7).
# 1969 and 2030 are deliberately absent: the UTC+7 computation gives 16 Feb 1969 and
# 2 Feb 2030 (a day before China), but no published Vietnamese source was at hand.
VIETNAM_TET = {
    1968: date(1968, 1, 29),
    1970: date(1970, 2, 6),
    1971: date(1971, 1, 27),
    1972: date(1972, 2, 15),
    1973: date(1973, 2, 3),
    1974: date(1974, 1, 23),
    1975: date(1975, 2, 11),
    1976: date(1976, 1, 31),
    1977: date(1977, 2, 18),
    1978: date(1978, 2, 7),
    1979: date(1979, 1, 28),
    1980: date(1980, 2, 16),
    1981: date(1981, 2, 5),
    1982: date(1982, 1, 25),
    1983: date(1983, 2, 13),
    1984: date(1984, 2, 2),
    1985: date(1985, 1, 21),
    1986: date(1986, 2, 9),
    1987: date(1987, 1, 29),
    1988: date(1988, 2, 17),
    1989: date(1989, 2, 6),
    1990: date(1990, 1, 27),
    1991: date(1991, 2, 15),
    1992: date(1992, 2, 4),
    1993: date(1993, 1, 23),
    1994: date(1994, 2, 10),
    1995: date(1995, 1, 31),
    1996: date(1996, 2, 19),
    1997: date(1997, 2, 7),
    1998: date(1998, 1, 28),
    1999: date(1999, 2, 16),
    2000: date(2000, 2, 5),
    2001: date(2001, 1, 24),
    2002: date(2002, 2, 12),
    2003: date(2003, 2, 1),
    2004: date(2004, 1, 22),
    2005: date(2005, 2, 9),
    2006: date(2006, 1, 29),
    2007: date(2007, 2, 17),
    2008: date(2008, 2, 7),
    2009: date(2009, 1, 26),
    2010: date(2010, 2, 14),
    2011: date(2011, 2, 3),
    2012: date(2012, 1, 23),
    2013: date(2013, 2, 10),
    2014: date(2014, 1, 31),
    2015: date(2015, 2, 19),
    2016: date(2016, 2, 8),
    2017: date(2017, 1, 28),
    2018: date(2018, 2, 16),
    2019: date(2019, 2, 5),
    2020: date(2020, 1, 25),
    2021: date(2021, 2, 12),
    2022: date(2022, 2, 1),
    2023: date(2023, 1, 22),
    2024: date(2024, 2, 10),
    2025: date(2025, 1, 29),
    2026: date(2026, 2, 17),
    2027: date(2027, 2, 6),
    2028: date(2028, 1, 26),
    2029: date(2029, 2, 13),
    2031: date(2031, 1, 23),
    2032: date(2032, 2, 11),
    2033: date(2033, 1, 31),
    2034: date(2034, 2, 19),
    2035: date(2035, 2, 8),
}

# Until the 1967 reform Vietnam used the Chinese calendar (UTC+8), so its published Tết
# dates of the 1960s are reproduced with tz=8. (UTC+7 would give 1 Feb for 1965.)
VIETNAM_TET_BEFORE_REFORM = {
    1960: date(1960, 1, 28),
    1961: date(1961, 2, 15),
    1962: date(1962, 2, 5),
    1963: date(1963, 1, 25),
    1964: date(1964, 2, 13),
    1965: date(1965, 2, 2),
    1966: date(1966, 1, 21),
    1967: date(1967, 2, 9),
}

# Published Chinese New Year dates for years in which the Vietnamese Tết differs.
CHINESE_NEW_YEAR_DIFFERING = {
    1968: date(1968, 1, 30),
    1985: date(1985, 2, 20),
    2007: date(2007, 2, 18),
}

# Giỗ Tổ Hùng Vương, 10th day of the 3rd lunar month (a public holiday).
HUNG_KINGS = {
    2019: date(2019, 4, 14),
    2020: date(2020, 4, 2),
    2021: date(2021, 4, 21),
    2022: date(2022, 4, 10),
    2023: date(2023, 4, 29),
    2024: date(2024, 4, 18),
    2025: date(2025, 4, 7),
}

# Tết Trung Thu, 15th day of the 8th lunar month.
MID_AUTUMN = {
    2019: date(2019, 9, 13),
    2020: date(2020, 10, 1),
    2021: date(2021, 9, 21),
    2022: date(2022, 9, 10),
    2023: date(2023, 9, 29),
    2024: date(2024, 9, 17),
    2025: date(2025, 10, 6),
}

# Published leap (nhuận) months; None = a 12-month year.
LEAP_MONTHS: dict[int, int | None] = {
    2001: 4,
    2004: 2,
    2006: 7,
    2009: 5,
    2012: 4,
    2014: 9,
    2017: 6,
    2020: 4,
    2021: None,
    2022: None,
    2023: 2,
    2024: None,
    2025: 6,
}


@pytest.mark.parametrize(("year", "expected"), sorted(VIETNAM_TET.items()))
def test_tet_matches_published_vietnamese_dates(year: int, expected: date) -> None:
    assert tet(year) == expected
    assert to_lunar(expected) == LunarDate(year, 1, 1)
    assert to_lunar(expected - timedelta(days=1)).year == year - 1


@pytest.mark.parametrize(("year", "expected"), sorted(VIETNAM_TET_BEFORE_REFORM.items()))
def test_tet_before_1968_reform_uses_utc8(year: int, expected: date) -> None:
    assert tet(year, tz=CHINA_TZ) == expected


@pytest.mark.parametrize(("year", "chinese"), sorted(CHINESE_NEW_YEAR_DIFFERING.items()))
def test_same_code_with_utc8_gives_chinese_new_year(year: int, chinese: date) -> None:
    assert tet(year, tz=8.0) == chinese
    assert tet(year) == VIETNAM_TET[year]
    assert tet(year) != chinese


def test_1985_tet_a_month_early_because_china_had_leap_10th_month_in_1984() -> None:
    assert leap_month(1984, tz=CHINA_TZ) == 10
    assert leap_month(1984) is None
    assert (tet(1985, tz=CHINA_TZ) - tet(1985)).days == 30
    assert to_lunar(date(1985, 1, 21), tz=CHINA_TZ) == LunarDate(1984, 12, 1)


@pytest.mark.parametrize(("year", "expected"), sorted(HUNG_KINGS.items()))
def test_hung_kings_commemoration(year: int, expected: date) -> None:
    assert to_solar(LunarDate(year, 3, 10)) == expected
    assert to_lunar(expected) == LunarDate(year, 3, 10)


@pytest.mark.parametrize(("year", "expected"), sorted(MID_AUTUMN.items()))
def test_mid_autumn_festival(year: int, expected: date) -> None:
    assert to_solar(LunarDate(year, 8, 15)) == expected


@pytest.mark.parametrize(("year", "expected"), sorted(LEAP_MONTHS.items()))
def test_leap_months(year: int, expected: int | None) -> None:
    assert leap_month(year) == expected


def test_leap_month_dates() -> None:
    # First days of the leap months of 2020, 2023 and 2025.
    assert to_solar(LunarDate(2020, 4, 1, leap=True)) == date(2020, 5, 23)
    assert to_solar(LunarDate(2023, 2, 1, leap=True)) == date(2023, 3, 22)
    assert to_solar(LunarDate(2025, 6, 1, leap=True)) == date(2025, 7, 25)
    assert to_lunar(date(2020, 5, 22)) == LunarDate(2020, 4, 30)
    assert to_lunar(date(2020, 5, 23)) == LunarDate(2020, 4, 1, leap=True)


def test_last_days_of_lunar_year_2023_and_2024() -> None:
    # 9 Feb 2024 was "30 Tết"; lunar year 2024 (Giáp Thìn) ended on the 29th.
    assert month_length(2023, 12) == 30
    assert to_lunar(date(2024, 2, 9)) == LunarDate(2023, 12, 30)
    assert month_length(2024, 12) == 29
    assert to_lunar(date(2025, 1, 28)) == LunarDate(2024, 12, 29)


def test_round_trip_every_day() -> None:
    for tz in (7.0, 8.0):
        d = date(1995, 1, 1)
        previous = to_lunar(d - timedelta(days=1), tz)
        while d < date(2036, 1, 1):
            lunar = to_lunar(d, tz)
            assert to_solar(lunar, tz) == d
            if lunar.day == 1:  # a new month follows the last day of the previous one
                assert previous.day == month_length(
                    previous.year, previous.month, previous.leap, tz
                )
            else:
                assert lunar == LunarDate(
                    previous.year, previous.month, previous.day + 1, previous.leap
                )
            previous = lunar
            d += timedelta(days=1)


def test_round_trip_every_lunar_date() -> None:
    for year in range(1990, 2041):
        leap = leap_month(year)
        months = [(m, False) for m in range(1, 13)]
        if leap is not None:
            months.insert(leap, (leap, True))
        expected = tet(year)
        for month, is_leap in months:
            for day in range(1, month_length(year, month, is_leap) + 1):
                lunar = LunarDate(year, month, day, is_leap)
                assert to_solar(lunar) == expected
                assert to_lunar(to_solar(lunar)) == lunar
                expected += timedelta(days=1)
        assert expected == tet(year + 1)


def test_year_structure_over_supported_range() -> None:
    for year in range(1900, 2101):
        leap = leap_month(year)
        lengths = [month_length(year, m) for m in range(1, 13)]
        if leap is not None:
            lengths.append(month_length(year, leap, leap=True))
        assert set(lengths) <= {29, 30}
        assert sum(lengths) == (tet(year + 1) - tet(year)).days
        assert date(year, 1, 21) <= tet(year) <= date(year, 2, 20)


@pytest.mark.parametrize(
    ("lunar", "message"),
    [
        (LunarDate(2024, 12, 30), "day 30"),  # month 12 of 2024 has 29 days
        (LunarDate(2024, 4, 1, leap=True), "no leap month 4"),  # 2024 has no leap month
        (LunarDate(2023, 3, 1, leap=True), "no leap month 3"),  # 2023's leap month is the 2nd
        (LunarDate(2024, 13, 1), "month"),
        (LunarDate(2024, 0, 1), "month"),
        (LunarDate(2024, 1, 0), "day 0"),
        (LunarDate(2024, 1, 31), "day 31"),
        (LunarDate(MIN_YEAR - 1, 1, 1), "supported"),
        (LunarDate(MAX_YEAR + 1, 1, 1), "supported"),
    ],
)
def test_to_solar_rejects_nonexistent_dates(lunar: LunarDate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_solar(lunar)


def test_month_length_and_leap_month_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="no leap month 5"):
        month_length(2024, 5, leap=True)
    with pytest.raises(ValueError, match="month"):
        month_length(2024, 13)
    with pytest.raises(ValueError, match="supported"):
        leap_month(MAX_YEAR + 1)


def test_next_occurrence_across_year_boundary() -> None:
    assert next_occurrence(1, 1, date(2024, 12, 31)) == date(2025, 1, 29)
    assert next_occurrence(1, 1, date(2025, 1, 28)) == date(2025, 1, 29)
    # Strictly after: on Tết itself the next one is a year later.
    assert next_occurrence(1, 1, date(2025, 1, 29)) == date(2026, 2, 17)
    # 1 Jan 2025 is still in lunar year 2024, whose 23rd of month 12 falls in 2025.
    assert next_occurrence(12, 23, date(2025, 1, 1)) == date(2025, 1, 22)
    assert next_occurrence(3, 10, date(2024, 4, 18)) == date(2025, 4, 7)


def test_next_occurrence_day_30_falls_back_to_last_day() -> None:
    assert next_occurrence(12, 30, date(2023, 6, 1)) == date(2024, 2, 9)
    # Month 12 of lunar 2024 has only 29 days: the last day is used instead.
    assert next_occurrence(12, 30, date(2024, 2, 9)) == date(2025, 1, 28)
    assert to_lunar(date(2025, 1, 28)) == LunarDate(2024, 12, 29)


def test_next_occurrence_regular_month_ignores_leap_month() -> None:
    # 15/4 of 2020 was 7 May; the leap 4th month's 15th (6 June) is not the same date.
    assert next_occurrence(4, 15, date(2020, 5, 1)) == date(2020, 5, 7)
    assert next_occurrence(4, 15, date(2020, 5, 7)) == date(2021, 5, 26)


def test_next_occurrence_leap_month_skips_years_without_it() -> None:
    assert next_occurrence(4, 1, date(2019, 1, 1), leap=True) == date(2020, 5, 23)
    assert next_occurrence(6, 1, date(2024, 1, 1), leap=True) == date(2025, 7, 25)
    result = next_occurrence(2, 10, date(2023, 4, 30), leap=True)
    lunar = to_lunar(result)
    assert (lunar.month, lunar.day, lunar.leap) == (2, 10, True)
    assert all(leap_month(y) != 2 for y in range(2024, lunar.year))


def test_next_occurrence_leap_day_30_falls_back() -> None:
    year = next(
        y for y in range(2000, 2100) if (m := leap_month(y)) and month_length(y, m, True) == 29
    )
    month = leap_month(year)
    assert month is not None
    expected = to_solar(LunarDate(year, month, 29, leap=True))
    assert next_occurrence(month, 30, tet(year), leap=True) == expected


def test_next_occurrence_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="month"):
        next_occurrence(0, 1, date(2024, 1, 1))
    with pytest.raises(ValueError, match="day"):
        next_occurrence(1, 31, date(2024, 1, 1))


def test_lunar_date_is_frozen_and_hashable() -> None:
    lunar = LunarDate(2025, 1, 1)
    assert lunar.leap is False
    assert {lunar: 1}[LunarDate(2025, 1, 1)] == 1
    with pytest.raises(AttributeError):
        lunar.day = 2  # type: ignore[misc]

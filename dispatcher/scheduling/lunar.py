"""Vietnamese lunisolar calendar (âm lịch), computed astronomically.

Source of the algorithm: Hồ Ngọc Đức, "Computing the Vietnamese lunar calendar",
https://www.informatik.uni-leipzig.de/~duc/amlich/calrules_en.html (2004), which takes
its truncated new-moon series and solar-longitude formula from Jean Meeus,
*Astronomical Algorithms* (Willmann-Bell, 1998).

The rules, all evaluated in the local civil time of ``tz`` hours east of UTC:

1. A lunar month begins on the day that contains the new moon.
2. Lunar month 11 is the month that contains the December solstice.
3. If there are 13 new moons between two consecutive month-11 starts, the first month
   after month 11 that contains no major solar term (sun longitude a multiple of 30°)
   is a leap month and repeats the number of the month before it.
4. The lunar year begins with month 1 (Tết Nguyên Đán).

Vietnam has computed its calendar for UTC+7 since the 1967 reform (first effective for
Tết 1968); China uses UTC+8. That single parameter is why the two calendars differ in
some years (e.g. Tết 1985 was 21 January in Vietnam but Chinese New Year was 20
February), so every function takes ``tz`` (default :data:`VIETNAM_TZ`) and passing
:data:`CHINA_TZ` gives the Chinese calendar. Before the reform Vietnam followed the
Chinese calendar, so pass ``tz=8.0`` to reproduce historical dates before 1968.

Accuracy: the short series put new moons within a few minutes of their true time. Over
1968-2053 the result agrees month by month with the tables Hồ Ngọc Đức published; a
month whose new moon falls within a minute or two of local midnight (e.g. months in
2054, 2072 and 2077) may start a day off from a precise ephemeris. Supported lunar years
are :data:`MIN_YEAR`..:data:`MAX_YEAR`, the range the algorithm was published for.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import NamedTuple

__all__ = [
    "CHINA_TZ",
    "MAX_YEAR",
    "MIN_YEAR",
    "VIETNAM_TZ",
    "LunarDate",
    "leap_month",
    "month_length",
    "next_occurrence",
    "tet",
    "to_lunar",
    "to_solar",
]

VIETNAM_TZ = 7.0
CHINA_TZ = 8.0
MIN_YEAR = 1800
MAX_YEAR = 2199

# date.toordinal() counts from 0001-01-01 = 1; the Julian Day Number of that day is
# 1721426, so adding this offset gives the JDN used by the astronomical formulas.
_JDN_OFFSET = 1721425
# Julian date of the new moon of 1900-01-01 (lunation k = 0 in Meeus' series, as in Đức).
_NEW_MOON_EPOCH = 2415021.076998695
_SYNODIC_MONTH = 29.530588853
_DEG = math.pi / 180.0


@dataclass(frozen=True)
class LunarDate:
    """A date on the lunisolar calendar.

    ``year`` is the lunar year (the Gregorian year in which its Tết falls), ``month`` is
    1..12, ``day`` is 1..30 and ``leap`` marks the intercalary (nhuận) month that repeats
    ``month``'s number. Instances are not validated; :func:`to_solar` rejects dates that
    do not exist.
    """

    year: int
    month: int
    day: int
    leap: bool = False


class _Month(NamedTuple):
    """One lunar month: its number, leap flag, lunar year and first day (JDN)."""

    month: int
    leap: bool
    year: int
    start: int


# --- astronomy ---------------------------------------------------------------------


def _new_moon(k: int) -> float:
    """Julian date (UT) of new moon number ``k`` (``k = 0`` fell on 1 January 1900)."""
    t = k / 1236.85  # Julian centuries from 1900-01-01
    t2 = t * t
    t3 = t2 * t
    jd1 = 2415020.75933 + 29.53058868 * k + 0.0001178 * t2 - 0.000000155 * t3
    jd1 += 0.00033 * math.sin((166.56 + 132.87 * t - 0.009173 * t2) * _DEG)
    m = 359.2242 + 29.10535608 * k - 0.0000333 * t2 - 0.00000347 * t3  # sun's mean anomaly
    mpr = 306.0253 + 385.81691806 * k + 0.0107306 * t2 + 0.00001236 * t3  # moon's anomaly
    f = 21.2964 + 390.67050646 * k - 0.0016528 * t2 - 0.00000239 * t3  # moon's latitude arg
    # Periodic terms of the true new moon, summed one by one (signs as in Meeus).
    c1 = (
        (0.1734 - 0.000393 * t) * math.sin(m * _DEG)
        + 0.0021 * math.sin(2 * m * _DEG)
        - 0.4068 * math.sin(mpr * _DEG)
        + 0.0161 * math.sin(2 * mpr * _DEG)
        - 0.0004 * math.sin(3 * mpr * _DEG)
        + 0.0104 * math.sin(2 * f * _DEG)
        - 0.0051 * math.sin((m + mpr) * _DEG)
        - 0.0074 * math.sin((m - mpr) * _DEG)
        + 0.0004 * math.sin((2 * f + m) * _DEG)
        - 0.0004 * math.sin((2 * f - m) * _DEG)
        - 0.0006 * math.sin((2 * f + mpr) * _DEG)
        + 0.0010 * math.sin((2 * f - mpr) * _DEG)
        + 0.0005 * math.sin((2 * mpr + m) * _DEG)
    )
    # The series gives Dynamical Time; subtract Đức's ΔT fit (in days) to get UT.
    if t < -11:
        delta_t = 0.001 + 0.000839 * t + 0.0002261 * t2 - 0.00000845 * t3 - 0.000000081 * t * t3
    else:
        delta_t = -0.000278 + 0.000265 * t + 0.000262 * t2
    return jd1 + c1 - delta_t


def _new_moon_day(k: int, tz: float) -> int:
    """JDN of the local civil day on which new moon ``k`` falls."""
    # A JDN day runs from JD n-0.5 to n+0.5 in UT; shift by the zone offset.
    return math.floor(_new_moon(k) + 0.5 + tz / 24.0)


def _sun_longitude(jd: float) -> float:
    """Sun's true longitude in radians, in [0, 2π), at Julian date ``jd`` (UT)."""
    t = (jd - 2451545.0) / 36525  # Julian centuries from J2000.0
    t2 = t * t
    m = 357.52910 + 35999.05030 * t - 0.0001559 * t2 - 0.00000048 * t * t2  # mean anomaly
    l0 = 280.46645 + 36000.76983 * t + 0.0003032 * t2  # mean longitude
    dl = (1.914600 - 0.004817 * t - 0.000014 * t2) * math.sin(_DEG * m)
    dl += (0.019993 - 0.000101 * t) * math.sin(_DEG * 2 * m) + 0.000290 * math.sin(_DEG * 3 * m)
    lon = (l0 + dl) * _DEG
    return lon - 2 * math.pi * math.floor(lon / (2 * math.pi))


def _major_term_sector(day: int, tz: float) -> int:
    """Which 30° sector (0..11, 0 = from the March equinox) the sun is in at local 00:00."""
    # Local midnight starting day `day` is JD day - 0.5 in UT, moved back by the offset.
    return math.floor(_sun_longitude(day - 0.5 - tz / 24.0) / (math.pi / 6))


def _month11_k(year: int, tz: float) -> int:
    """Lunation number of the month 11 that contains the December solstice of ``year``."""
    off = _jdn(date(year, 12, 31)) - 2415021
    k = math.floor(off / _SYNODIC_MONTH)  # the last new moon on or before 31 December
    # Sector 9 starts at 270°, the solstice: a month starting after it cannot be month 11.
    if _major_term_sector(_new_moon_day(k, tz), tz) >= 9:
        k -= 1
    return k


# --- calendar tables ---------------------------------------------------------------


@lru_cache(maxsize=1024)
def _window(year: int, tz: float) -> tuple[tuple[_Month, ...], int]:
    """Months from month 11 of solar ``year`` up to (not incl.) the next month 11.

    Returns the months and the JDN at which the window ends.
    """
    k0 = _month11_k(year, tz)
    k1 = _month11_k(year + 1, tz)
    count = k1 - k0  # 12, or 13 in a year that needs a leap month
    leap_index = 0  # 0 means "no leap month": index 0 is month 11 itself, never leap
    if count == 13:
        # The leap month is the first one whose start and end lie in the same sector,
        # i.e. that contains no major term. Month 11 always contains the solstice.
        sectors = [_major_term_sector(_new_moon_day(k0 + i, tz), tz) for i in range(count + 1)]
        leap_index = next((i for i in range(1, count) if sectors[i] == sectors[i + 1]), 0)
        if leap_index == 0:  # pragma: no cover - 13 months always hold a month without a term
            raise RuntimeError(f"no month without a major term in lunar year {year + 1}")
    months: list[_Month] = []
    lunar_year = year  # months 11 and 12 belong to the lunar year that started in `year`
    for i in range(count):
        number = i + 11 if leap_index == 0 or i < leap_index else i + 10
        number = number - 12 if number > 12 else number
        is_leap = i == leap_index and leap_index != 0
        if number == 1 and not is_leap:
            lunar_year = year + 1
        months.append(_Month(number, is_leap, lunar_year, _new_moon_day(k0 + i, tz)))
    return tuple(months), _new_moon_day(k1, tz)


@lru_cache(maxsize=1024)
def _year_months(year: int, tz: float) -> tuple[tuple[_Month, ...], int]:
    """Months 1..12 (and any leap month) of lunar ``year``, in order, and its end JDN."""
    # Months 1..10 lie in the window opened by the previous December's month 11; months
    # 11 and 12 (and a rare leap 11/12) lie in the window opened in December of `year`.
    before, _ = _window(year - 1, tz)
    after, after_end = _window(year, tz)
    months = tuple(m for m in (*before, *after) if m.year == year)
    tail = [m for m in after if m.year == year + 1]
    end = tail[0].start if tail else after_end
    return months, end


def _find_month(year: int, month: int, leap: bool, tz: float) -> tuple[int, int]:
    """First day (JDN) and length in days of a lunar month; ValueError if it does not exist."""
    _check_year(year)
    if not 1 <= month <= 12:
        raise ValueError(f"lunar month must be in 1..12, got {month}")
    months, end = _year_months(year, tz)
    for i, m in enumerate(months):
        if m.month == month and m.leap == leap:
            next_start = months[i + 1].start if i + 1 < len(months) else end
            return m.start, next_start - m.start
    raise ValueError(
        f"lunar year {year} has no leap month {month} (tz={tz:g}); "
        f"its leap month is {_leap_number(months) or 'absent'}"
    )


def _leap_number(months: tuple[_Month, ...]) -> int | None:
    return next((m.month for m in months if m.leap), None)


def _check_year(year: int) -> None:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"lunar year {year} is outside the supported {MIN_YEAR}..{MAX_YEAR}")


def _jdn(d: date) -> int:
    return d.toordinal() + _JDN_OFFSET


def _from_jdn(jdn: int) -> date:
    return date.fromordinal(jdn - _JDN_OFFSET)


# --- public API --------------------------------------------------------------------


def to_lunar(d: date, tz: float = VIETNAM_TZ) -> LunarDate:
    """Convert a Gregorian date to the lunar calendar of zone ``tz`` (UTC+7 by default).

    Raises ``ValueError`` if the lunar year falls outside ``MIN_YEAR..MAX_YEAR``.
    """
    if not MIN_YEAR <= d.year <= MAX_YEAR + 1:
        raise ValueError(
            f"{d.isoformat()} is outside the supported lunar years {MIN_YEAR}..{MAX_YEAR}"
        )
    jdn = _jdn(d)
    months, end = _window(d.year, tz)
    if jdn < months[0].start:  # before this December's month 11: previous window
        months, end = _window(d.year - 1, tz)
    assert months[0].start <= jdn < end  # the windows tile the timeline
    month = months[bisect_right([m.start for m in months], jdn) - 1]
    _check_year(month.year)
    return LunarDate(month.year, month.month, jdn - month.start + 1, month.leap)


def to_solar(lunar: LunarDate, tz: float = VIETNAM_TZ) -> date:
    """Convert a lunar date of zone ``tz`` to its Gregorian date.

    Raises ``ValueError`` if the date does not exist: month outside 1..12, day outside
    1..30 or past the end of a 29-day month, or a leap month the year does not have.
    """
    start, length = _find_month(lunar.year, lunar.month, lunar.leap, tz)
    if not 1 <= lunar.day <= length:
        kind = "leap month" if lunar.leap else "month"
        raise ValueError(
            f"day {lunar.day} does not exist: {kind} {lunar.month} of lunar year "
            f"{lunar.year} has {length} days (tz={tz:g})"
        )
    return _from_jdn(start + lunar.day - 1)


def tet(year: int, tz: float = VIETNAM_TZ) -> date:
    """Gregorian date of Tết (1st day of the 1st lunar month) of lunar ``year``."""
    return to_solar(LunarDate(year, 1, 1), tz)


def month_length(year: int, month: int, leap: bool = False, tz: float = VIETNAM_TZ) -> int:
    """Number of days (29 or 30) of a lunar month; ``ValueError`` if it does not exist."""
    return _find_month(year, month, leap, tz)[1]


def leap_month(year: int, tz: float = VIETNAM_TZ) -> int | None:
    """Number of the leap month of lunar ``year``, or ``None`` if it has only 12 months."""
    _check_year(year)
    return _leap_number(_year_months(year, tz)[0])


def next_occurrence(
    month: int, day: int, after: date, *, leap: bool = False, tz: float = VIETNAM_TZ
) -> date:
    """First Gregorian date strictly after ``after`` that falls on lunar ``month``/``day``.

    - ``day == 30`` in a year where that month has only 29 days yields day 29 (the
      month's last day), so a "last day of the month" anniversary is never skipped.
    - With ``leap=False`` only the regular month counts, never a leap month of the same
      number. With ``leap=True`` years that do not have that leap month are skipped;
      leap months are rare (some numbers occur once in decades), so this may look far.

    Raises ``ValueError`` for a month outside 1..12 or a day outside 1..30, or if no
    occurrence exists up to ``MAX_YEAR``.
    """
    if not 1 <= month <= 12:
        raise ValueError(f"lunar month must be in 1..12, got {month}")
    if not 1 <= day <= 30:
        raise ValueError(f"lunar day must be in 1..30, got {day}")
    # Every date of an earlier lunar year precedes `after`, so start with its own year.
    for year in range(to_lunar(after, tz).year, MAX_YEAR + 1):
        if leap and leap_month(year, tz) != month:
            continue
        start, length = _find_month(year, month, leap, tz)
        candidate = _from_jdn(start + min(day, length) - 1)
        if candidate > after:
            return candidate
    kind = "leap month" if leap else "month"
    raise ValueError(f"no {kind} {month} day {day} after {after.isoformat()} up to {MAX_YEAR}")

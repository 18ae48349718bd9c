"""Schedule rules: when a recurring campaign fires.

A campaign's ``schedule`` is one of:

- ``{"type": "cron", "cron": "0 7 * * 1", "timezone": "Asia/Ho_Chi_Minh"}``: croniter;
- ``{"type": "lunar", "month": 1, "day": 1, "leap": false, "at": "07:00", "offset_days": -3}``:
  a day of the Vietnamese lunar calendar (computed for UTC+7), at a local time, optionally
  some days before or after ("3 days before Tết");
- ``{"type": "birthday", "at": "08:00"}``: every day, for the recipients born on that day;
  people born on 29 February are greeted on 28 February in common years;
- ``{"type": "occasion", "occasion": "tet", "at": "07:00"}``: one of the national occasions of
  :data:`OCCASIONS`.

Every computation takes the instant to start from: nothing here reads the clock.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from dispatcher.kit.fields import StrictBool, StrictInt, TimeOfDay, one_of
from dispatcher.scheduling import lunar

VIETNAM = "Asia/Ho_Chi_Minh"


@dataclass(frozen=True, slots=True)
class Occasion:
    key: str
    name: str  # Vietnamese, for people
    month: int
    day: int
    lunar: bool = False
    template: str | None = None  # the built-in greeting made for it, when there is one


OCCASIONS: dict[str, Occasion] = {
    o.key: o
    for o in (
        Occasion("new_year", "Tết Dương lịch", 1, 1, template="new_year"),
        Occasion("tet", "Tết Nguyên đán", 1, 1, lunar=True, template="tet"),
        Occasion("vss_founding", "Ngày thành lập Bảo hiểm xã hội Việt Nam", 2, 16),
        Occasion("hung_kings", "Giỗ Tổ Hùng Vương", 3, 10, lunar=True),
        Occasion(
            "reunification_day",
            "Ngày Giải phóng miền Nam, thống nhất đất nước",
            4,
            30,
            template="reunification_day",
        ),
        Occasion("labour_day", "Ngày Quốc tế Lao động", 5, 1),
        Occasion("health_insurance_day", "Ngày Bảo hiểm y tế Việt Nam", 7, 1),
        Occasion("national_day", "Quốc khánh", 9, 2, template="national_day"),
    )
}

STEMS = ("Giáp", "Ất", "Bính", "Đinh", "Mậu", "Kỷ", "Canh", "Tân", "Nhâm", "Quý")
BRANCHES = ("Tý", "Sửu", "Dần", "Mão", "Thìn", "Tỵ", "Ngọ", "Mùi", "Thân", "Dậu", "Tuất", "Hợi")


def lunar_year_name(year: int) -> str:
    """The sexagenary name of a lunar year: 2026 → Bính Ngọ, 2027 → Đinh Mùi."""
    return f"{STEMS[(year + 6) % 10]} {BRANCHES[(year + 8) % 12]}"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


# Five cron fields of numbers, ranges, lists and steps (minute hour day month weekday).
_STEP = r"(?:/[1-9][0-9]{0,2})?"


def _cron_field(number: str) -> str:
    item = rf"(?:\*|{number}(?:-{number})?){_STEP}"
    return rf"{item}(?:,{item})*"


CRON = "^{}$".format(
    " +".join(
        _cron_field(n)
        for n in (
            r"(?:[0-9]|[1-5][0-9])",
            r"(?:[0-9]|1[0-9]|2[0-3])",
            r"(?:[1-9]|[12][0-9]|3[01])",
            r"(?:[1-9]|1[0-2])",
            r"[0-7]",
        )
    )
)


def _zones() -> set[str]:
    return available_timezones()


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field(default=VIETNAM, json_schema_extra=one_of(_zones))

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)


class CronRule(_Rule):
    type: Literal["cron"]
    cron: str = Field(description="Five fields (minute hour day month weekday).", pattern=CRON)

    @field_validator("cron")
    @classmethod
    def _valid(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"not a five-field cron expression: {value!r}")
        return value


class _DailyRule(_Rule):
    at: TimeOfDay = time(7, 0)
    offset_days: StrictInt = Field(default=0, ge=-90, le=90)


class LunarRule(_DailyRule):
    type: Literal["lunar"]
    month: StrictInt = Field(ge=1, le=12)
    day: StrictInt = Field(ge=1, le=30)
    leap: StrictBool = False


class BirthdayRule(_Rule):
    type: Literal["birthday"]
    at: TimeOfDay = time(8, 0)


class OccasionRule(_DailyRule):
    type: Literal["occasion"]
    occasion: str = Field(json_schema_extra=one_of(lambda: OCCASIONS))

    @field_validator("occasion")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in OCCASIONS:
            raise ValueError(f"unknown occasion {value!r}; one of {', '.join(OCCASIONS)}")
        return value


Schedule = Annotated[
    CronRule | LunarRule | BirthdayRule | OccasionRule, Field(discriminator="type")
]
_schedule: TypeAdapter[Schedule] = TypeAdapter(Schedule)


def parse(data: Any) -> CronRule | LunarRule | BirthdayRule | OccasionRule:
    return _schedule.validate_python(data)


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _next_solar(month: int, day: int, rule: _DailyRule, after: datetime) -> datetime:
    local = after.astimezone(rule.zone).date() - timedelta(days=rule.offset_days + 1)
    for year in range(local.year, local.year + 3):
        try:
            base = date(year, month, day)
        except ValueError:
            continue
        instant = _local_instant(base + timedelta(days=rule.offset_days), rule.at, rule.zone)
        if instant > after:
            return instant
    raise ValueError(f"no date {day}/{month} after {after.isoformat()}")


def _next_lunar(month: int, day: int, leap: bool, rule: _DailyRule, after: datetime) -> datetime:
    # Start the search early enough that an offset into the next solar day is not missed.
    cursor = after.astimezone(rule.zone).date() - timedelta(days=rule.offset_days + 2)
    while True:
        base = lunar.next_occurrence(month, day, cursor, leap=leap)
        instant = _local_instant(base + timedelta(days=rule.offset_days), rule.at, rule.zone)
        if instant > after:
            return instant
        cursor = base


def next_after(
    rule: CronRule | LunarRule | BirthdayRule | OccasionRule, after: datetime
) -> datetime:
    """The first firing strictly after ``after`` (aware), in UTC."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    if isinstance(rule, CronRule):
        nxt = croniter(rule.cron, after.astimezone(rule.zone)).get_next(datetime)
        return nxt.astimezone(UTC)
    if isinstance(rule, BirthdayRule):
        local = after.astimezone(rule.zone).date()
        for day in (local, local + timedelta(days=1)):
            instant = _local_instant(day, rule.at, rule.zone)
            if instant > after:
                return instant
        raise AssertionError("unreachable")
    if isinstance(rule, LunarRule):
        return _next_lunar(rule.month, rule.day, rule.leap, rule, after)
    occasion = OCCASIONS[rule.occasion]
    if occasion.lunar:
        return _next_lunar(occasion.month, occasion.day, False, rule, after)
    return _next_solar(occasion.month, occasion.day, rule, after)


def firings(
    rule: CronRule | LunarRule | BirthdayRule | OccasionRule, start: datetime, end: datetime
) -> list[datetime]:
    """Every firing in (start, end]."""
    out: list[datetime] = []
    cursor = start
    while True:
        cursor = next_after(rule, cursor)
        if cursor > end:
            return out
        out.append(cursor)


def birthday_audience(rule: BirthdayRule, slot: datetime) -> dict[str, Any]:
    """The audience filter of a birthday run: born on the slot's local day (29 February's
    people on 28 February when the year has no 29th)."""
    day = slot.astimezone(rule.zone).date()
    born = [f"{day.month:02d}-{day.day:02d}"]
    if (day.month, day.day) == (2, 28) and not calendar.isleap(day.year):
        born.append("02-29")
    return {"born_on": born}


def calendar_variables(instant: datetime, zone: str = VIETNAM) -> dict[str, Any]:
    """What every message knows of its day: the local year and date, the lunar year's name.

    Every run provides them (from the instant it stands for), so any template may use them.
    """
    local = instant.astimezone(_zone(zone)).date()
    lunar_year = lunar.to_lunar(local).year
    return {
        "year": str(local.year),
        "date": local.strftime("%d/%m/%Y"),
        "lunar_year": lunar_year,
        "lunar_year_name": lunar_year_name(lunar_year),
    }


def firing_variables(
    rule: CronRule | LunarRule | BirthdayRule | OccasionRule, slot: datetime
) -> dict[str, Any]:
    """Template variables of a firing: its calendar, and the occasion it is for."""
    variables = calendar_variables(slot, rule.timezone)
    lunar_date = lunar.to_lunar(slot.astimezone(rule.zone).date())
    if isinstance(rule, OccasionRule):
        variables["occasion"] = rule.occasion
        occasion = OCCASIONS[rule.occasion]
        if occasion.lunar and rule.offset_days < 0:
            # Greetings sent before Tết announce the year that is coming.
            coming = lunar_date.year + (1 if lunar_date.month >= 11 else 0)
            variables["lunar_year"] = coming
            variables["lunar_year_name"] = lunar_year_name(coming)
    return variables

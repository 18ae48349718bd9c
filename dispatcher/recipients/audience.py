"""The audience filter language, compiled to SQL over ``recipients`` (never run in Python).

A filter is a JSON object; several keys in one object must all hold::

    {"all": true}
    {"external_ids": ["0123456789", ...]}
    {"province": ["Hà Nội", "Quảng Ninh"]}
    {"kind": "organization"}            {"language": ["vi", "km"]}
    {"born_on": ["03-08"]}              (birthday: month-day)
    {"age": {"min": 60, "max": 75}}     (whole years, on the day the run plans)
    {"attributes": {"participation": ["compulsory", "voluntary"]}}   (values in ``attributes``)
    {"saved": "nguoi_cao_tuoi_ha_noi"}  (a saved audience, resolved when the run plans)
    {"and": [f, ...]}   {"or": [f, ...]}   {"not": f}
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, and_, extract, false, not_, or_, true

from dispatcher.tables.recipients import Recipient

MAX_EXTERNAL_IDS = 100_000
KINDS = ("person", "organization")


class AudienceError(ValueError):
    """A filter that does not parse; the message names the path of the bad part."""


def _strings(value: Any, path: str, *, allow_single: bool = True) -> list[str]:
    if allow_single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise AudienceError(f"{path}: expected a non-empty list of strings")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise AudienceError(f"{path}: every item must be a non-empty string")
    return [v.strip() for v in value]


Resolver = Callable[[str], dict[str, Any] | None]
MAX_DEPTH = 8
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a common year
        return day.replace(year=day.year - years, day=28)


def compile_audience(
    spec: Any,
    path: str = "audience",
    *,
    today: date | None = None,
    resolve: Resolver | None = None,
    _depth: int = 0,
) -> ColumnElement[bool]:
    """Validate a filter and turn it into a WHERE clause; raises :class:`AudienceError`.

    ``today`` anchors age ranges (default: 1 January 2000, for validation only);
    ``resolve`` looks up saved audiences by name (without it a name is only checked for form).
    """
    if _depth > MAX_DEPTH:
        raise AudienceError(
            f"{path}: filters nest deeper than {MAX_DEPTH} (a saved audience loop?)"
        )
    anchor = today or date(2000, 1, 1)

    def sub(value: Any, where: str) -> ColumnElement[bool]:
        return compile_audience(value, where, today=today, resolve=resolve, _depth=_depth + 1)

    if not isinstance(spec, dict) or not spec:
        raise AudienceError(f"{path}: expected a non-empty object")
    clauses: list[ColumnElement[bool]] = []
    for key, value in spec.items():
        where = f"{path}.{key}"
        if key == "all":
            if value is not True:
                raise AudienceError(f"{where}: must be true")
            clauses.append(true())
        elif key == "external_ids":
            ids = _strings(value, where, allow_single=False)
            if len(ids) > MAX_EXTERNAL_IDS:
                raise AudienceError(f"{where}: at most {MAX_EXTERNAL_IDS} ids")
            clauses.append(Recipient.external_id.in_(ids))
        elif key == "province":
            clauses.append(Recipient.province.in_(_strings(value, where)))
        elif key == "kind":
            kinds = _strings(value, where)
            bad = [k for k in kinds if k not in KINDS]
            if bad:
                raise AudienceError(f"{where}: unknown kind {bad[0]!r}; use person or organization")
            clauses.append(Recipient.kind.in_(kinds))
        elif key == "language":
            langs = [v.lower() for v in _strings(value, where)]
            clauses.append(Recipient.language.in_(langs))
        elif key == "born_on":
            days = _strings(value, where)
            matches = []
            for text in days:
                try:
                    month, day = (int(part) for part in text.split("-"))
                    date(2000, month, day)  # a leap year: 02-29 is a real birthday
                except ValueError:
                    raise AudienceError(f"{where}: {text!r} is not a day as MM-DD") from None
                matches.append(
                    and_(
                        extract("month", Recipient.birth_date) == month,
                        extract("day", Recipient.birth_date) == day,
                    )
                )
            clauses.append(or_(*matches))
        elif key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise AudienceError(f"{where}: expected a non-empty list of filters")
            parts = [sub(v, f"{where}[{i}]") for i, v in enumerate(value)]
            clauses.append(and_(*parts) if key == "and" else or_(*parts))
        elif key == "not":
            clauses.append(not_(sub(value, where)))
        elif key == "age":
            if not isinstance(value, dict) or not value or set(value) - {"min", "max"}:
                raise AudienceError(f'{where}: expected {{"min": years, "max": years}}')
            bounds: dict[str, int | None] = {}
            for name in ("min", "max"):
                if name not in value:
                    bounds[name] = None  # open on that side (null is not a number of years)
                    continue
                bound = value[name]
                if isinstance(bound, float) and bound.is_integer():
                    bound = int(bound)  # JSON's 60.0 is the integer 60
                if isinstance(bound, bool) or not isinstance(bound, int) or not 0 <= bound <= 150:
                    raise AudienceError(f"{where}.{name}: a whole number of years, 0 to 150")
                bounds[name] = bound
            low, high = bounds["min"], bounds["max"]
            if low is not None and high is not None and low > high:
                raise AudienceError(f"{where}: min is above max")
            parts = [Recipient.birth_date.is_not(None)]
            if low is not None:
                parts.append(Recipient.birth_date <= _years_before(anchor, low))
            if high is not None:
                parts.append(Recipient.birth_date > _years_before(anchor, high + 1))
            clauses.append(and_(*parts))
        elif key == "attributes":
            if not isinstance(value, dict) or not value:
                raise AudienceError(f'{where}: expected {{"name": [values]}}')
            for name, wanted in value.items():
                if not ATTRIBUTE_NAME.match(str(name)):
                    raise AudienceError(f"{where}: {name!r} is not an attribute name")
                values = _strings(wanted, f"{where}.{name}")
                clauses.append(Recipient.attributes[name].as_string().in_(values))
        elif key == "saved":
            if not isinstance(value, str) or not value.strip():
                raise AudienceError(f"{where}: the name of a saved audience")
            if resolve is not None:
                saved = resolve(value)
                if saved is None:
                    raise AudienceError(f"{where}: no saved audience named {value!r}")
                clauses.append(sub(saved, f"{where}({value})"))
        else:
            known = (
                "all, external_ids, province, kind, language, born_on, age, attributes, saved, "
                "and, or, not"
            )
            raise AudienceError(f"{where}: unknown filter {key!r}; known filters: {known}")
    if not clauses:
        return false()
    return and_(*clauses) if len(clauses) > 1 else clauses[0]

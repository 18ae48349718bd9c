"""The audience filter language, compiled to SQL over ``recipients`` (never run in Python).

A filter is a JSON object; several keys in one object must all hold::

    {"all": true}
    {"external_ids": ["0123456789", ...]}
    {"province": ["Hà Nội", "Quảng Ninh"]}
    {"kind": "organization"}            {"language": ["vi", "km"]}
    {"born_on": ["03-08"]}              (birthday: month-day)
    {"and": [f, ...]}   {"or": [f, ...]}   {"not": f}
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, and_, extract, false, not_, or_, true

from dispatcher.recipients.models import Recipient

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


def compile_audience(spec: Any, path: str = "audience") -> ColumnElement[bool]:
    """Validate a filter and turn it into a WHERE clause; raises :class:`AudienceError`."""
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
            parts = [compile_audience(v, f"{where}[{i}]") for i, v in enumerate(value)]
            clauses.append(and_(*parts) if key == "and" else or_(*parts))
        elif key == "not":
            clauses.append(not_(compile_audience(value, where)))
        else:
            known = "all, external_ids, province, kind, language, born_on, and, or, not"
            raise AudienceError(f"{where}: unknown filter {key!r}; known filters: {known}")
    if not clauses:
        return false()
    return and_(*clauses) if len(clauses) > 1 else clauses[0]

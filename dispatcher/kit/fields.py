"""Field types whose JSON Schema says exactly what they accept.

The OpenAPI document is the API's contract: a request that matches it is accepted (unless it
names something that does not exist), and one that does not is refused with a 422. Pydantic's
lax mode accepts more than the schema says (``"1"`` for an integer, a number of seconds for a
time, text with surrounding spaces for a pattern), so input models use these types instead of
``str``, ``datetime`` or ``str_strip_whitespace``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

# What Python's str.strip() removes, spelled out: JSON Schema regexes and pydantic's regex
# engine do not agree on what \s means.
SPACE = (
    "\\t\\n\\x0b\\x0c\\r\\x1c\\x1d\\x1e\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
NOT_BLANK = f"[^{SPACE}]"


def padded(pattern: str) -> str:
    """``pattern`` (anchored with ^ and $) with optional white space around it, which the
    field strips: what a validator that strips first accepts."""
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return f"^[{SPACE}]*(?:{pattern[1:-1]})[{SPACE}]*$"


def _strip(value: str) -> str:
    return value.strip()


def Text(max_length: int, *, min_length: int = 1) -> Any:
    """Free text of ``min_length`` to ``max_length`` characters, not only spaces (when
    ``min_length`` is 1), stored without surrounding spaces."""
    pattern = NOT_BLANK if min_length > 0 else None
    return Annotated[
        str,
        StringConstraints(min_length=min_length, max_length=max_length, pattern=pattern),
        AfterValidator(_strip),
    ]


def Name(pattern: str) -> Any:
    """An identifier matching ``pattern``; surrounding spaces are allowed and stripped."""
    return Annotated[str, StringConstraints(pattern=padded(pattern)), AfterValidator(_strip)]


def one_of(values: Callable[[], Iterable[str]]) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` naming the allowed values, read when the schema is built
    (channels come from the installed plugins)."""

    def extra(schema: dict[str, Any]) -> None:
        schema["enum"] = sorted(values())

    return extra


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"^\d{2}:\d{2}")


def _iso(shape: re.Pattern[str], kind: type, example: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, kind):
            return value
        if not isinstance(value, str) or not shape.match(value):
            raise ValueError(f"an ISO 8601 {kind.__name__} as text, e.g. {example}")
        return value

    return check


# Pydantic also reads numbers as Unix times; the schema says a string in ISO 8601.
Instant = Annotated[datetime, BeforeValidator(_iso(_DATE, datetime, "2026-01-01T07:00:00+07:00"))]
Day = Annotated[date, BeforeValidator(_iso(_DATE, date, "1985-04-15"))]
TimeOfDay = Annotated[time, BeforeValidator(_iso(_TIME, time, "07:00"))]


def _json_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # JSON Schema's integer: 7.0 is 7
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("a whole number, written as a JSON number")
    return value


# Integers and booleans as JSON has them: no "1" for 1, no 1 for true.
StrictInt = Annotated[int, BeforeValidator(_json_int)]
StrictBool = Annotated[bool, Field(strict=True)]


def case_insensitive(word: str) -> str:
    """A regex for ``word`` in any case (JSON Schema regexes have no (?i))."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)

"""Pagination cursors: a page's ``next_cursor`` is the id of its last row, given back for the next.

Lists are read newest first by id, so "after" a cursor means ids below it. The pattern is the
API's contract (the OpenAPI document shows it); anything else is refused as a cursor this API
never returned.
"""

from __future__ import annotations

import re

from dispatcher.kit.errors import Invalid

CURSOR = r"^[0-9]{1,18}$"


def encode_cursor(last_id: int) -> str:
    """The cursor of the page after the row ``last_id``: its id, as ``CURSOR`` says."""
    return str(last_id)


def decode_cursor(cursor: str) -> int:
    if not re.fullmatch(CURSOR, cursor):
        raise Invalid("not a cursor this API returned", loc=["query", "cursor"])
    return int(cursor)

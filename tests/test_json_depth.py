"""The nesting bound applied to every JSON body and JSON Lines row before decoding."""

from __future__ import annotations

import json

import pytest

from dispatcher.kit.json_depth import TooDeep, check, depth, loads


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "]]", "{"]', 1),  # brackets inside strings are text
        (r'["\"[[[", "\\", ["x\\"]]', 2),  # escaped quotes and backslashes
        (r'["\\\"[", []]', 2),
        ("[[]][[[]]]", 3),
        ('{"a": "unterminated [[[[', 1),
    ],
)
def test_depth_counts_only_the_structure(text: str, expected: int) -> None:
    assert depth(text) == expected


def test_check_refuses_only_what_nests_deeper_than_the_limit() -> None:
    at_limit = "[" * 32 + "]" * 32
    check(at_limit, 32)
    assert loads(at_limit, 32) is not None
    for deeper in ("[" * 33 + "]" * 33, "[" * 100_000, "[{" * 40 + "1"):
        with pytest.raises(TooDeep, match="more than 32 levels deep"):
            check(deeper, 32)
    with pytest.raises(ValueError):  # TooDeep is a ValueError, like the decoder's errors
        loads("[" * 5_000 + "]" * 5_000, 32)
    wide = json.dumps([{"a": [i, {"b": "[" * 50}]} for i in range(10_000)])
    check(wide, 32)

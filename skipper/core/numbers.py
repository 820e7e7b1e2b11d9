"""Whole-list checks of a request's JSON numbers, for the predict path: each a single pass in C.

Values arrive from JSON as Python ints and floats. A bool is an int subclass and not a number
here, so types are compared exactly. When a check says no, the caller's value-by-value path
finds the culprit and words the error; these only make the usual, valid request cheap.
"""

from __future__ import annotations

import math
from typing import Any

NUMBERS = frozenset({int, float})
FLOATS = frozenset({float})
FLOAT32_MAX = 3.4028234663852886e38


def plain(values: list[Any]) -> bool:
    """Whether every value is an int or a float (exactly: not a bool, not a string)."""
    return NUMBERS.issuperset(map(type, values))


def finite_within(values: list[Any], limit: float = math.inf) -> bool:
    """Whether plain numbers `values` are all finite and within `[-limit, limit]`.

    A NaN or an infinity makes the sum non-finite; so may the sum of large finite values, a
    false no that the caller's checked path settles.
    """
    try:
        if not math.isfinite(sum(values)):
            return False
    except OverflowError:  # an integer beyond float
        return False
    return limit == math.inf or (max(values) <= limit and min(values) >= -limit)

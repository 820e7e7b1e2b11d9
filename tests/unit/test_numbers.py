"""The whole-list number checks the predict path relies on (api rows, OIP tensors, the server's rows)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from skipper.core import numbers


@pytest.mark.parametrize(("values", "plain"), [
    ([1.5, -2, 0], True), ([1.0, True], False), ([1.0, "2"], False), ([1.0, None], False), ([[1.0]], False)])
def test_plain_means_ints_and_floats_by_exact_type(values: list[Any], plain: bool) -> None:
    assert numbers.plain(values) is plain


@pytest.mark.parametrize(("values", "limit", "ok"), [
    ([1.5, -2, 0], math.inf, True),
    ([1.0, math.nan], math.inf, False),
    ([1.0, -math.inf], math.inf, False),
    ([0, 10**400], math.inf, False),  # beyond float
    ([0.0, 10**400], math.inf, False),
    ([numbers.FLOAT32_MAX, -numbers.FLOAT32_MAX], numbers.FLOAT32_MAX, True),
    ([0.0, 3.5e38], numbers.FLOAT32_MAX, False),
    ([-3.5e38, 0.0], numbers.FLOAT32_MAX, False),
])
def test_finite_within_refuses_what_is_not_a_finite_number_in_range(values: list[Any], limit: float, ok: bool) -> None:
    assert numbers.finite_within(values, limit) is ok

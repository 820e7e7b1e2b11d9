"""A model's inputs and outputs as named tensors, for the inference protocols (Open Inference Protocol,
TensorFlow Serving): their metadata from a version's feature schema, and a server's predictions as tensors.

One input, `input`: the feature matrix, FP32 `[-1, features]`. Outputs by model kind:
- regression: `predictions`, FP32 `[-1, targets]`;
- classification: `probabilities`, FP32 `[-1, classes]` (every head's classes side by side when a
  model has several targets), and `label`, BYTES `[-1]` (`[-1, targets]` with several targets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from skipper.core import numbers
from skipper.core.errors import BadRequest, RemoteError

INPUT = "input"
DATATYPES = frozenset({"FP32", "FP64", "INT32", "INT64"})
_INT_RANGE = {"INT32": 2**31, "INT64": 2**63}
_INTEGERS = frozenset({int})


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor's metadata; -1 is the batch dimension."""

    name: str
    datatype: str
    shape: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True, slots=True)
class Tensor:
    """An output tensor: `rows` holds each row's value (a list for 2-D tensors, a scalar for 1-D ones)."""

    name: str
    datatype: str
    shape: list[int]
    rows: list[Any]

    def flat(self) -> list[Any]:
        """The data in row-major order."""
        return [v for row in self.rows for v in row] if len(self.shape) == 2 else list(self.rows)


def input_spec(metadata: dict[str, Any]) -> TensorSpec:
    return TensorSpec(INPUT, "FP32", [-1, len(metadata.get("features") or [])])


def output_specs(metadata: dict[str, Any]) -> list[TensorSpec]:
    """The outputs a version answers with, from its metadata (kind, targets, classes)."""
    targets = list(metadata.get("targets") or [])
    if metadata.get("kind") != "classification":
        return [TensorSpec("predictions", "FP32", [-1, max(1, len(targets))])]
    classes = metadata.get("classes")
    if isinstance(classes, dict):
        width = sum(len(c) for c in classes.values() if isinstance(c, list)) or -1
    else:
        width = len(classes) if isinstance(classes, list) else -1
    label = [-1] if len(targets) <= 1 else [-1, len(targets)]
    return [TensorSpec("probabilities", "FP32", [-1, width]), TensorSpec("label", "BYTES", label)]


def to_tensors(predictions: Sequence[Any]) -> list[Tensor]:
    """A server's predictions (one per row, as the native route returns them) as the output tensors."""
    n = len(predictions)
    first = predictions[0] if n else 0.0
    try:
        if isinstance(first, (int, float)):  # regression, one target
            return [Tensor("predictions", "FP32", [n, 1], [[float(p)] for p in predictions])]
        if _is_class(first):  # classification, one target
            probabilities = [list(p["probabilities"].values()) for p in predictions]
            return [Tensor("probabilities", "FP32", [n, len(probabilities[0])], probabilities),
                    Tensor("label", "BYTES", [n], [str(p["label"]) for p in predictions])]
        if isinstance(first, dict) and all(_is_class(v) for v in first.values()):  # classification, several targets
            probabilities = [[q for head in p.values() for q in head["probabilities"].values()] for p in predictions]
            labels = [[str(head["label"]) for head in p.values()] for p in predictions]
            return [Tensor("probabilities", "FP32", [n, len(probabilities[0])], probabilities),
                    Tensor("label", "BYTES", [n, len(labels[0])], labels)]
        if isinstance(first, dict):  # regression, several targets
            values = [[float(v) for v in p.values()] for p in predictions]
            return [Tensor("predictions", "FP32", [n, len(values[0])], values)]
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    raise RemoteError("the server answered predictions of an unexpected shape")


def select(tensors: list[Tensor], wanted: Sequence[str] | None) -> list[Tensor]:
    """The tensors named in `wanted` (all when None), in the requested order; `BadRequest` for an unknown name."""
    if wanted is None:
        return tensors
    by_name = {t.name: t for t in tensors}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise BadRequest(f"unknown output {unknown[0]!r}; this model has {', '.join(by_name)}")
    return [by_name[name] for name in wanted]


def matrix(data: Any, datatype: Any, shape: Any, width: int, max_rows: int, name: Any) -> list[list[float]]:
    """The rows of a `[n, width]` input tensor `name` whose `data` is row-major, flat or nested; `BadRequest` when invalid."""
    if type(datatype) is not str or datatype not in DATATYPES:
        raise BadRequest(f"{_what(name)}: datatype {datatype!r} is not supported; send FP32, FP64, INT32 or INT64")
    if type(shape) is not list or len(shape) != 2 or type(shape[0]) is not int or type(shape[1]) is not int:
        raise BadRequest(f"{_what(name)}: shape must be [rows, {width}], got {shape!r}")
    n, columns = shape
    if columns != width:
        raise BadRequest(f"{_what(name)}: shape {shape} has {columns} columns; the model takes {width} features")
    if n < 1 or n > max_rows:
        raise BadRequest(f"{_what(name)}: shape {shape} must have between 1 and {max_rows} rows")
    flat = _flatten(data, name)
    if len(flat) != n * width:
        raise BadRequest(f"{_what(name)}: data has {len(flat)} elements; shape {shape} needs {n * width}")
    integer = datatype in _INT_RANGE
    limit = _INT_RANGE[datatype] if integer else numbers.FLOAT32_MAX if datatype == "FP32" else math.inf
    values = _fast(flat, integer, limit)
    if values is None:  # something is wrong: find it, value by value, and say what
        check = _integer if integer else _real
        what = _what(name)
        values = [check(v, limit, datatype, what) for v in flat]
    if width == len(values):
        return [values]
    return [values[i : i + width] for i in range(0, len(values), width)]


def _what(name: Any) -> str:
    return f"input {name!r}"


def _fast(flat: list[Any], integer: bool, limit: float) -> list[float] | None:
    """The values as floats when all are valid (checked a whole list at a time), else None."""
    types = set(map(type, flat))
    if integer:
        if types != _INTEGERS or not (-limit <= min(flat) and max(flat) < limit):
            return None
        return list(map(float, flat))
    if not numbers.NUMBERS.issuperset(types) or not numbers.finite_within(flat, limit):
        return None
    return flat if types == numbers.FLOATS else list(map(float, flat))


def _is_class(value: Any) -> bool:
    return isinstance(value, dict) and "label" in value and isinstance(value.get("probabilities"), dict)


def _flatten(data: Any, name: Any) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest(f"{_what(name)}: data must be a list")
    if not data or not isinstance(data[0], list):
        return data  # flat already (the common case); a stray list inside fails the element check
    flat: list[Any] = []

    def walk(items: list[Any]) -> None:  # depth is bounded by the JSON depth limit
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                flat.append(item)

    walk(data)
    return flat


def _real(value: Any, limit: float, datatype: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{what}: {datatype} data must be numbers, got {type(value).__name__}")
    number = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
    if not math.isfinite(number) or abs(number) > limit:
        raise BadRequest(f"{what}: {value!r} is not a finite {datatype} value")
    return number


def _integer(value: Any, limit: float, datatype: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{what}: {datatype} data must be integers, got {value!r}")
    if not -limit <= value < limit:
        raise BadRequest(f"{what}: {value} is out of the {datatype} range")
    return float(value)

"""Input validation for the api: train params and prediction instances, with errors naming the field."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from skipper.core import numbers
from skipper.core.errors import ValidationFailed
from skipper.core.settings import TrainParams, Workflow


def resolve_params(workflow: Workflow, body: Any) -> TrainParams:
    """The workflow's default params overridden by the request's `params` object."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", details={"field": "body"})
    unknown = set(body) - {"params"}
    if unknown:
        raise ValidationFailed(f"unknown field {sorted(unknown)[0]!r}; expected 'params'",
                               details={"field": sorted(unknown)[0]})
    overrides = body.get("params")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ValidationFailed("params must be a JSON object", details={"field": "params"})
    merged = workflow.params.model_dump()
    merged.update(overrides)
    try:
        # Strict, as JSON: "5" is not an epoch count and true is not a learning rate (what openapi.json says).
        return TrainParams.model_validate_json(json.dumps(merged), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "params." + ".".join(str(p) for p in first["loc"])
        raise ValidationFailed(f"{field}: {first['msg']}", details={
            "field": field,
            "errors": [{"field": "params." + ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                       for e in exc.errors()],
        }) from None


def parse_instances(body: Any, features: list[str], max_instances: int) -> list[list[float]]:
    """Rows in schema order from `{"instances": [...]}`; each row a list or a {feature: value} object."""
    if not isinstance(body, dict) or "instances" not in body:
        raise ValidationFailed("request body must be an object with an 'instances' list", details={"field": "instances"})
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValidationFailed("instances must be a non-empty list", details={"field": "instances"})
    if len(instances) > max_instances:
        raise ValidationFailed(f"at most {max_instances} instances per request, got {len(instances)}",
                               details={"field": "instances", "limit": max_instances})
    width = len(features)
    fast = _plain_rows(instances, features)
    if fast is not None:
        return fast
    index = {name: i for i, name in enumerate(features)}
    rows: list[list[float]] = []
    for i, instance in enumerate(instances):
        if isinstance(instance, list):
            if len(instance) != width:
                raise ValidationFailed(f"instances[{i}] has {len(instance)} values, expected {width} ({', '.join(features)})",
                                       details={"field": f"instances[{i}]", "expected": width, "got": len(instance)})
            rows.append([_number(v, f"instances[{i}][{j}]") for j, v in enumerate(instance)])
        elif isinstance(instance, dict):
            row = [math.nan] * width
            for name, value in instance.items():
                j = index.get(name)
                if j is None:
                    raise ValidationFailed(f"instances[{i}] has unknown feature {name!r}",
                                           details={"field": f"instances[{i}].{name}", "features": features})
                row[j] = _number(value, f"instances[{i}].{name}")
            missing = [features[j] for j, v in enumerate(row) if math.isnan(v)]
            if missing:
                raise ValidationFailed(f"instances[{i}] is missing feature {missing[0]!r}",
                                       details={"field": f"instances[{i}].{missing[0]}", "missing": missing})
            rows.append(row)
        else:
            raise ValidationFailed(f"instances[{i}] must be a list of {width} numbers or an object of features",
                                   details={"field": f"instances[{i}]"})
    return rows


def _plain_rows(instances: list[Any], features: list[str]) -> list[list[float]] | None:
    """The rows when every instance is a list of finite numbers in feature order, or an object of exactly the
    features with finite numbers (the usual requests), else None.

    Checks a whole row at a time; on anything else the caller's value-by-value loop finds the
    first problem and names it, so the answer is exactly the loop's.
    """
    width = len(features)
    rows: list[list[float]] = []
    try:
        for instance in instances:
            kind = type(instance)
            if kind is dict and len(instance) == width:
                instance = [instance[name] for name in features]  # KeyError: an unknown feature, so one missing
            elif kind is not list or len(instance) != width:
                return None
            if not numbers.plain(instance) or not numbers.finite_within(instance):
                return None
            rows.append(list(map(float, instance)))
    except KeyError:  # an unknown feature, so one missing: the loop says which
        return None
    return rows


def _number(value: Any, field: str) -> float:
    # bool is an int subclass; True is not a feature value.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationFailed(f"{field} must be a number, got {type(value).__name__}", details={"field": field})
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValidationFailed(f"{field} must be finite", details={"field": field})
    return number

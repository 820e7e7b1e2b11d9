"""Reading what the user types: `-p KEY=VALUE` parameters and prediction rows (JSON or CSV)."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import typer

# YAML 1.1 reads `5e-3` (no dot) as a string; users mean a number.
_EXPONENT_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`["epochs=30", "hidden_units=[64,32]", "early_stopping.patience=3"]` -> params; each VALUE is YAML."""
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. epochs=30)", param_hint="'-p' / '--param'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as exc:
            raise typer.BadParameter(f"{key}: {raw!r} is not a valid value: {exc}", param_hint="'-p' / '--param'") from None
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)
        # A dotted key reaches into a section: early_stopping.patience=3 -> {"early_stopping": {"patience": 3}}.
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise typer.BadParameter(f"{key}: {part} is already set to a value", param_hint="'-p' / '--param'")
            node = child
        node[leaf] = value
    return params


def read_rows(rows: str | None, file: str | None) -> list[Any]:
    """Prediction rows from the ROWS argument (JSON) or `-f FILE` (.json, .csv with a header, `-` for stdin)."""
    if (rows is None) == (file is None):
        raise typer.BadParameter("give the rows either as ROWS (JSON) or with -f FILE, not both", param_hint="ROWS")
    if rows is not None:
        return _json_rows(rows, "ROWS")
    assert file is not None
    if file == "-":
        text = sys.stdin.read()
        stripped = text.lstrip()
        return _json_rows(text, "stdin") if stripped[:1] in ("[", "{") else _csv_rows(text, "stdin")
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror or exc}", param_hint="'-f' / '--file'") from None
    if path.suffix.lower() == ".csv":
        return _csv_rows(text, file)
    return _json_rows(text, file)


def _json_rows(text: str, source: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{source} is not valid JSON: {exc}") from None
    if isinstance(value, dict) and "instances" in value:
        value = value["instances"]
    if isinstance(value, dict):  # one row as {feature: value}
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [value]  # one row as a flat list of numbers
    if not isinstance(value, list) or not value:
        raise typer.BadParameter(f"{source}: expected a list of rows (lists of numbers or objects by feature name)")
    return value


def _csv_rows(text: str, source: str) -> list[Any]:
    reader = csv.DictReader(io.StringIO(text))
    rows: list[dict[str, float]] = []
    for line, record in enumerate(reader, start=2):
        row: dict[str, float] = {}
        for name, raw in record.items():
            if name is None:
                raise typer.BadParameter(f"{source} line {line}: more values than header columns")
            try:
                row[name.strip()] = float(raw)
            except (TypeError, ValueError):
                raise typer.BadParameter(f"{source} line {line}: {name} = {raw!r} is not a number") from None
        rows.append(row)
    if not rows:
        raise typer.BadParameter(f"{source}: no rows under the header (feature names)")
    return rows

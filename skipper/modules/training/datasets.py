"""Loading a workflow's dataset into numeric arrays, with named features and targets.

Two sources (see `DatasetSpec`): scikit-learn's bundled sets by name, and CSV files with a
header row. Every problem with the data is a typed `SkipperError` that names the dataset,
column and row, so the task fails once with a message a user can act on (no retries).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from skipper.core.errors import NotFound, ValidationFailed
from skipper.core.settings import DatasetSpec

Kind = Literal["regression", "classification"]

# Bundled sets: name -> whether the set's targets are class indices (with `target_names`).
SKLEARN_SETS: dict[str, bool] = {
    "diabetes": False,
    "linnerud": False,  # multi-output regression: Weight, Waist, Pulse
    "wine": True,
    "breast_cancer": True,
    "digits": True,
    "iris": True,
}
DEFAULT_TARGET = "target"


@dataclass(frozen=True, slots=True)
class Dataset:
    """A loaded dataset.

    `x` is float32 of shape (rows, features). For regression `y` is float32 of shape
    (rows, targets); for classification it is int64 of shape (rows,) holding indices into
    `classes` (the labels, as strings, in a stable order).
    """

    name: str
    features: list[str]
    targets: list[str]
    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    classes: list[str] | None = None

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


def load_dataset(spec: DatasetSpec, kind: Kind, *, data_dir: Path) -> Dataset:
    """Load the dataset `spec` describes for a `kind` task. Blocking (file I/O): call it off the loop."""
    if spec.source == "sklearn":
        return _load_sklearn(spec, kind)
    if spec.source == "csv":
        return _load_csv(spec, kind, data_dir)
    raise ValidationFailed(f"unknown dataset source {spec.source!r}", details={"source": spec.source})


# --- scikit-learn -----------------------------------------------------------------------------


def _load_sklearn(spec: DatasetSpec, kind: Kind) -> Dataset:
    name = spec.name or ""
    if name not in SKLEARN_SETS:
        raise NotFound(
            f"unknown scikit-learn dataset {name!r}; choose one of {', '.join(sorted(SKLEARN_SETS))}",
            details={"dataset": name, "available": sorted(SKLEARN_SETS)},
        )
    from sklearn import datasets as sk_datasets  # lazy: only the trainer needs scikit-learn's loaders

    loader: Callable[[], Any] = getattr(sk_datasets, f"load_{name}")
    # Not as_frame: pandas is not a dependency; the bunch's arrays and names are enough.
    bunch = loader()
    all_features = [str(f) for f in bunch.feature_names]
    x_all = np.asarray(bunch.data, dtype=np.float32)
    features = _select(all_features, spec.features, what="feature", dataset=name)
    x = x_all[:, [all_features.index(f) for f in features]]

    y_all = np.asarray(bunch.target)
    if y_all.ndim == 2:  # multi-output (linnerud): each column is named by target_names
        target_names = [str(t) for t in bunch.target_names]
        wanted = None if spec.targets in (None, [DEFAULT_TARGET]) else spec.targets
        targets = _select(target_names, wanted, what="target", dataset=name)
        if kind == "classification":
            raise ValidationFailed(
                f"dataset {name!r} has {len(target_names)} continuous targets; it can only train a regression",
                details={"dataset": name, "kind": kind},
            )
        y_multi = y_all[:, [target_names.index(t) for t in targets]].astype(np.float32)
        return Dataset(name, features, targets, x, y_multi)

    targets = spec.targets or [DEFAULT_TARGET]
    if targets != [DEFAULT_TARGET]:
        raise ValidationFailed(
            f"dataset {name!r} has a single target named {DEFAULT_TARGET!r}, not {targets}",
            details={"dataset": name, "targets": targets, "available": [DEFAULT_TARGET]},
        )
    if kind == "regression":
        return Dataset(name, features, targets, x, y_all.astype(np.float32).reshape(-1, 1))
    if not SKLEARN_SETS[name]:
        raise ValidationFailed(
            f"dataset {name!r} has a continuous target; it can only train a regression",
            details={"dataset": name, "kind": kind},
        )
    # Class indices into target_names: keep sklearn's order so index i is target_names[i].
    classes = [str(c) for c in bunch.target_names]
    return Dataset(name, features, targets, x, y_all.astype(np.int64), classes)


# --- CSV ----------------------------------------------------------------------------------------


def resolve_path(path: str, data_dir: Path) -> Path:
    """An absolute path as given; a relative one under the data directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else data_dir / p


def _load_csv(spec: DatasetSpec, kind: Kind, data_dir: Path) -> Dataset:
    if not spec.path:
        raise ValidationFailed("a csv dataset needs a path", details={"source": "csv"})
    path = resolve_path(spec.path, data_dir)
    name = path.name
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate a BOM from spreadsheets
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [row for row in reader if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise NotFound(f"dataset file not found: {path}", details={"path": str(path)}) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValidationFailed(f"cannot read dataset file {path}: {exc}", details={"path": str(path)}) from None

    if not header or not any(h.strip() for h in header):
        raise ValidationFailed(f"dataset file {path} is empty or has no header row", details={"path": str(path)})
    columns = [h.strip() for h in header]
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates or "" in columns:
        raise ValidationFailed(
            f"dataset {name!r} has {'duplicate' if duplicates else 'empty'} column names in its header"
            + (f": {', '.join(duplicates)}" if duplicates else ""),
            details={"path": str(path), "columns": columns},
        )
    if not rows:
        raise ValidationFailed(f"dataset {name!r} has a header but no rows", details={"path": str(path)})
    for number, row in enumerate(rows, start=1):
        if len(row) != len(columns):
            raise ValidationFailed(
                f"dataset {name!r} row {number} has {len(row)} values; the header has {len(columns)} columns",
                details={"path": str(path), "row": number, "values": len(row), "columns": len(columns)},
            )

    if not spec.targets:
        raise ValidationFailed(f"a csv dataset needs its target column(s) named ({name!r})", details={"path": str(path)})
    targets = _select(columns, spec.targets, what="target", dataset=name)
    if spec.features is None:
        features = [c for c in columns if c not in targets]
    else:
        features = _select(columns, spec.features, what="feature", dataset=name)
        overlap = [f for f in features if f in targets]
        if overlap:
            raise ValidationFailed(
                f"column(s) {', '.join(map(repr, overlap))} of dataset {name!r} are both feature and target",
                details={"dataset": name, "columns": overlap},
            )
    if not features:
        raise ValidationFailed(f"dataset {name!r} has no feature columns", details={"dataset": name})

    x = np.empty((len(rows), len(features)), dtype=np.float32)
    for j, col in enumerate(features):
        x[:, j] = _numeric_column(rows, columns.index(col), col, name)

    if kind == "classification":
        if len(targets) != 1:
            raise ValidationFailed(
                f"a classification needs exactly one target column, got {targets}",
                details={"dataset": name, "targets": targets},
            )
        label_index = columns.index(targets[0])
        labels = []
        for number, row in enumerate(rows, start=1):
            label = row[label_index].strip()
            if not label:
                raise _bad_value(name, targets[0], number, row[label_index], "an empty label")
            labels.append(label)
        classes, y = _encode_labels(labels)
        return Dataset(name, features, targets, x, y, classes)

    y_reg = np.empty((len(rows), len(targets)), dtype=np.float32)
    for j, col in enumerate(targets):
        y_reg[:, j] = _numeric_column(rows, columns.index(col), col, name)
    return Dataset(name, features, targets, x, y_reg)


def _numeric_column(rows: Sequence[Sequence[str]], index: int, column: str, dataset: str) -> list[float]:
    values = []
    for number, row in enumerate(rows, start=1):
        raw = row[index]
        try:
            value = float(raw)
        except ValueError:
            raise _bad_value(dataset, column, number, raw, "a non-numeric value") from None
        if not math.isfinite(value):
            raise _bad_value(dataset, column, number, raw, "a non-finite value")
        values.append(value)
    return values


def _bad_value(dataset: str, column: str, row: int, raw: str, what: str) -> ValidationFailed:
    return ValidationFailed(
        f"column {column!r} of dataset {dataset!r} has {what} {raw!r} in row {row} (line {row + 1})",
        details={"dataset": dataset, "column": column, "row": row, "line": row + 1, "value": raw},
    )


# --- shared -------------------------------------------------------------------------------------


def _select(available: list[str], wanted: list[str] | None, *, what: str, dataset: str) -> list[str]:
    """`wanted` (all of `available` when None), checking every name exists."""
    if wanted is None:
        return list(available)
    missing = [w for w in wanted if w not in available]
    if missing:
        raise ValidationFailed(
            f"unknown {what} column(s) {', '.join(map(repr, missing))} in dataset {dataset!r}",
            details={"dataset": dataset, "missing": missing, "columns": available},
        )
    if len(set(wanted)) != len(wanted):
        raise ValidationFailed(f"{what} columns are listed twice: {wanted}", details={"dataset": dataset})
    return list(wanted)


def _encode_labels(labels: list[str]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Class labels in a stable order (numeric order when every label is a number) and the indices."""
    unique = set(labels)
    try:
        # Numeric labels ("2" before "10") sort by value; ties ("1" vs "1.0") by text.
        classes = sorted(unique, key=lambda label: (float(label), label))
    except ValueError:
        classes = sorted(unique)
    if len(classes) < 2:
        raise ValidationFailed(
            f"a classification needs at least two classes; the target holds only {classes}",
            details={"classes": classes},
        )
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))

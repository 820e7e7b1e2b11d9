"""Turning a loaded Keras model into JSON-able predictions, fast.

The hot path is a `tf.function` with a fixed input signature, traced once: Keras 3
`model.predict()` builds a data pipeline on every call (~45 ms) and eager `model(x)` is ~6x
slower than the traced function (see DESIGN.md, "Performance notes"). Of what is left of a
small model's call, most is TensorFlow's own Python: a `tf.function` call looks its trace up
(hashing the argument's type) and binds the argument to the signature each time, ~150 us of CPU.
The predictor therefore calls the traced graph itself, its concrete function's `_call_flat`
with a float32 tensor it already checked, which is ~2x cheaper per call; a TensorFlow without
that (private) method gets the public concrete-function call. With `serving.jit_compile` (off by
default: results move in the last float32 digits when a size switches) each batch size is also
compiled by XLA in the background and used where it is faster (`xla.py`). TensorFlow is
imported only when a predictor is built, never when the serving package is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from skipper.core.errors import ArtifactRejected, ConfigError
from skipper.core.imports import resolve
from skipper.core.settings import ServingSettings, Settings
from skipper.modules.serving.xla import XlaSizes

DEFAULT_PREDICTOR = "skipper.modules.serving.predictor:KerasPredictor"


class Predictor(Protocol):
    """What the serving module needs from a predictor (plug your own in via `Workflow.predictor`).

    Built in a worker thread as `cls(model, metadata, settings)`; `predict` is then called on
    the event loop (or in a worker thread for slow models), one batch at a time.
    """

    n_features: int

    def predict(self, rows: np.ndarray) -> list[Any]:
        """One JSON-able prediction per row of a `[n, n_features]` float32 array."""
        ...

    def warm_up(self) -> None:
        """Trace/compile now so the first request doesn't pay for it; raise if the model is unusable."""
        ...


PredictorFactory = Callable[[Any, dict[str, Any], ServingSettings], Predictor]


def resolve_predictor(settings: Settings, model_name: str) -> PredictorFactory:
    """The predictor class configured for `model_name` by the workflow that produces it.

    Taken from trusted configuration only, never from the artifact's own metadata.
    """
    path = DEFAULT_PREDICTOR
    for workflow in settings.workflows.values():
        if workflow.model == model_name:
            path = workflow.predictor or DEFAULT_PREDICTOR
            break
    try:
        factory: PredictorFactory = resolve(path, what="predictor")
    except ConfigError as exc:
        raise ArtifactRejected(exc.message, details=exc.details) from exc
    return factory


@dataclass(frozen=True, slots=True)
class _Head:
    """Where one target's values sit among the model's output columns."""

    target: str
    start: int
    width: int
    classes: tuple[str, ...] = ()


class KerasPredictor:
    """Serves a Keras model through a traced `tf.function` (`[None, n_features]` float32), and XLA where it pays."""

    def __init__(self, model: Any, metadata: dict[str, Any], settings: ServingSettings) -> None:
        import tensorflow as tf

        self._model = model
        self._name = str(metadata.get("name") or "the model")
        self.kind = str(metadata.get("kind", "regression"))
        if self.kind not in ("regression", "classification"):
            raise ArtifactRejected(f"unknown model kind {self.kind!r}")
        self.n_features = _input_width(model, metadata.get("features"))
        self.targets = [str(t) for t in metadata.get("targets") or []]
        self._classes = metadata.get("classes")
        # "logits" or "probabilities"; when absent, warm_up probes the model to find out.
        self._declared_output = metadata.get("output")
        self._logits = self._declared_output == "logits"
        self._max_rows = settings.max_batch_size
        self._heads: list[_Head] = []
        self._call: Callable[[np.ndarray], Any] = lambda rows: self._fn(rows)  # until warm_up: the checked call
        self.xla: XlaSizes | None = None  # with jit_compile, set by warm_up
        targets = self.targets

        def forward(x: Any) -> Any:
            out = model(x, training=False)
            if isinstance(out, Mapping):
                keys = targets if targets and set(targets) <= set(out) else sorted(out)
                out = [out[k] for k in keys]
            flat = out if isinstance(out, Sequence) else [out]
            # One [n, k] float32 tensor: a single device->numpy copy however many heads.
            cols = [tf.reshape(tf.cast(t, tf.float32), [tf.shape(t)[0], -1]) for t in flat]
            return cols[0] if len(cols) == 1 else tf.concat(cols, axis=1)

        signature = [tf.TensorSpec([None, self.n_features], tf.float32)]
        self._fn = tf.function(forward, input_signature=signature)
        self._xla_fn = tf.function(forward, input_signature=signature, jit_compile=True) if settings.jit_compile else None

    # --- public ------------------------------------------------------------------------

    def warm_up(self) -> None:
        self._call = _graph_call(self._fn.get_concrete_function())
        out = self._raw(np.zeros((1, self.n_features), dtype=np.float32))
        xla_fn = self._xla_fn
        if xla_fn is not None:  # compiled in the background, size by size, as batches come (see xla.py)
            self.xla = XlaSizes(lambda: _graph_call(xla_fn.get_concrete_function()), self._call,
                                n_features=self.n_features, max_rows=self._max_rows, name=self._name)
        self._heads = self._layout(out.shape[1])
        if self.kind == "classification" and self._declared_output is None:
            # No declaration: decide once, on a deterministic probe, whether heads emit logits.
            probe = np.random.default_rng(0).normal(size=(64, self.n_features)).astype(np.float32)
            self._logits = not _looks_like_probabilities(self._raw(probe), self._heads)
        self.predict(np.zeros((1, self.n_features), dtype=np.float32))

    def predict(self, rows: np.ndarray) -> list[Any]:
        if not self._heads:
            raise RuntimeError("KerasPredictor.predict called before warm_up")
        if rows.shape[0] > self._max_rows:
            out = np.concatenate([self._raw(rows[i : i + self._max_rows]) for i in range(0, len(rows), self._max_rows)])
        else:
            out = self._raw(rows)
        if self.kind == "regression":
            if len(self._heads) == 1:
                return out[:, 0].tolist()  # type: ignore[no-any-return]
            names = [h.target for h in self._heads]
            return [dict(zip(names, row, strict=True)) for row in out.tolist()]
        decoded = [self._decode(out[:, h.start : h.start + h.width], h) for h in self._heads]
        if len(decoded) == 1:
            return decoded[0]
        names = [h.target for h in self._heads]
        return [dict(zip(names, per_row, strict=True)) for per_row in zip(*decoded, strict=True)]

    # --- internals -----------------------------------------------------------------------

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        if rows.ndim != 2 or rows.shape[1] != self.n_features:  # the graph calls below trust their input's shape
            raise ValueError(f"expected rows of {self.n_features} features, got an array of shape {rows.shape}")
        if rows.dtype != np.float32:
            rows = rows.astype(np.float32)
        n = rows.shape[0]
        fast = self.xla.call_for(n) if self.xla is not None and n else None
        if fast is None:
            out: np.ndarray = self._call(rows).numpy()
            return out
        size, call = fast
        if size != n:  # XLA compiled this bucket's shape: pad up to it
            rows = np.concatenate([rows, np.zeros((size - n, rows.shape[1]), dtype=np.float32)])
        out = call(rows).numpy()
        return out[:n]

    def _layout(self, width: int) -> list[_Head]:
        if self.kind == "regression":
            names = self.targets or (["target"] if width == 1 else [f"output_{i}" for i in range(width)])
            if len(names) != width:
                raise ArtifactRejected(f"model outputs {width} values but metadata names {len(names)} targets")
            return [_Head(name, i, 1) for i, name in enumerate(names)]
        classes = self._classes
        if isinstance(classes, Mapping):
            names = self.targets or [str(k) for k in classes]
            labels = [_labels(classes.get(t)) or () for t in names]
            if any(len(lab) < 2 for lab in labels):
                raise ArtifactRejected("every classification target needs its list of classes")
            full = [len(lab) for lab in labels]
            # Binary targets may have a one-column sigmoid head or a two-column softmax head.
            widths = full if sum(full) == width else [1 if n == 2 else n for n in full]
        else:
            if len(self.targets) > 1:
                raise ArtifactRejected("several classification targets need 'classes' as {target: [labels]}")
            names = self.targets[:1] or ["target"]
            single = _labels(classes) or tuple(str(i) for i in range(max(width, 2)))
            labels = [single]
            widths = [1 if width == 1 and len(single) == 2 else len(single)]
        if sum(widths) != width:
            raise ArtifactRejected(f"model outputs {width} values but metadata declares {sum(widths)} class columns")
        starts = np.cumsum([0, *widths[:-1]]).tolist()
        return [_Head(n, s, w, lab) for n, s, w, lab in zip(names, starts, widths, labels, strict=True)]

    def _decode(self, cols: np.ndarray, head: _Head) -> list[dict[str, Any]]:
        if head.width == 1:  # binary head: probability (or logit) of the second class
            p1 = cols[:, 0]
            if self._logits:
                p1 = 1.0 / (1.0 + np.exp(-p1))
            probs = np.stack([1.0 - p1, p1], axis=1)
        else:
            probs = _softmax(cols) if self._logits else cols
        labels = head.classes
        best = probs.argmax(axis=1).tolist()
        return [
            {"label": labels[b], "probabilities": dict(zip(labels, row, strict=True))}
            for b, row in zip(best, probs.tolist(), strict=True)
        ]


def _graph_call(concrete: Any) -> Callable[[np.ndarray], Any]:
    """Calls `concrete` (one float32 input, checked by the caller) without TensorFlow's per-call dispatch."""
    import tensorflow as tf

    call_flat = getattr(concrete, "_call_flat", None)
    captured = list(getattr(concrete, "captured_inputs", ()))
    if call_flat is None:
        return lambda rows: concrete(tf.constant(rows))
    return lambda rows: call_flat([tf.constant(rows)], captured)


def _input_width(model: Any, features: Any) -> int:
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ArtifactRejected(f"the model must take exactly one input tensor, it takes {len(inputs)}")
    shape = tuple(inputs[0].shape)
    declared = len(features) if isinstance(features, list) else None
    width = shape[-1] if len(shape) == 2 else None
    if width is not None and declared is not None and width != declared:
        raise ArtifactRejected(f"the model takes {width} inputs but metadata lists {declared} features")
    n = width if width is not None else declared
    if not n or n < 1:
        raise ArtifactRejected(f"cannot tell how many features the model takes (input shape {shape})")
    return int(n)


def _labels(classes: Any) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if not isinstance(classes, list) or len(classes) < 2:
        raise ArtifactRejected(f"classes must be a list of at least two labels, got {classes!r}")
    return tuple(str(c) for c in classes)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _looks_like_probabilities(out: np.ndarray, heads: list[_Head]) -> bool:
    for head in heads:
        cols = out[:, head.start : head.start + head.width]
        if cols.min() < -1e-6 or cols.max() > 1 + 1e-6:
            return False
        if head.width > 1 and not np.allclose(cols.sum(axis=1), 1.0, atol=1e-3):
            return False
    return True

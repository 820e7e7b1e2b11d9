"""KerasPredictor: output decoding for every kind of model the trainer may produce, and the jit path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from skipper.core.errors import ArtifactRejected
from skipper.core.settings import ServingSettings
from skipper.modules.serving.predictor import KerasPredictor

pytestmark = pytest.mark.tensorflow

X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)


def model(head: Any) -> Any:
    """4 inputs -> Dense(8) -> `head(hidden)`."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    return keras.Model(inputs, head(keras.layers.Dense(8, activation="relu")(inputs)))


def dense(units: int, activation: str | None = None) -> Any:
    import keras

    return lambda h: keras.layers.Dense(units, activation=activation)(h)


def predictor(keras_model: Any, settings: ServingSettings | None = None, **metadata: Any) -> KerasPredictor:
    p = KerasPredictor(keras_model, {"features": ["a", "b", "c", "d"], **metadata}, settings or ServingSettings())
    p.warm_up()
    return p


def raw(keras_model: Any) -> np.ndarray:
    return np.asarray(keras_model(X, training=False))


def test_a_softmax_classifier_gives_the_label_and_every_class_probability() -> None:
    m = model(dense(3, "softmax"))
    out = predictor(m, kind="classification", targets=["cultivar"], classes=[0, 1, 2]).predict(X)
    expected = raw(m)
    for row, probs in zip(out, expected, strict=True):
        assert row["label"] == str(int(probs.argmax()))
        assert list(row["probabilities"]) == ["0", "1", "2"]
        assert list(row["probabilities"].values()) == pytest.approx(probs.tolist(), abs=1e-6)


def test_a_sigmoid_binary_classifier_gives_both_class_probabilities() -> None:
    m = model(dense(1, "sigmoid"))
    out = predictor(m, kind="classification", targets=["diagnosis"], classes=["benign", "malignant"]).predict(X)
    for row, p in zip(out, raw(m)[:, 0], strict=True):
        assert row["probabilities"] == pytest.approx({"benign": 1 - p, "malignant": p}, abs=1e-6)
        assert row["label"] == ("malignant" if p > 0.5 else "benign")


def test_a_classifier_emitting_logits_is_given_probabilities() -> None:
    m = model(dense(3))
    out = predictor(m, kind="classification", classes=["x", "y", "z"]).predict(X)
    logits = raw(m)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for row, probs in zip(out, softmax, strict=True):
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(row["probabilities"].values()) == pytest.approx(probs.tolist(), abs=1e-5)


def test_a_regression_with_several_targets_gives_one_value_per_target() -> None:
    m = model(dense(2))
    out = predictor(m, kind="regression", targets=["low", "high"]).predict(X)
    assert out == [pytest.approx({"low": float(a), "high": float(b)}, abs=1e-6) for a, b in raw(m)]


def test_named_output_heads_are_matched_to_targets_by_name() -> None:
    import keras

    m = model(lambda h: {"high": keras.layers.Dense(1)(h), "low": keras.layers.Dense(1)(h)})
    out = predictor(m, kind="regression", targets=["low", "high"]).predict(X)
    heads = m(X, training=False)
    assert [r["low"] for r in out] == pytest.approx(np.asarray(heads["low"])[:, 0].tolist(), abs=1e-6)
    assert [r["high"] for r in out] == pytest.approx(np.asarray(heads["high"])[:, 0].tolist(), abs=1e-6)


@pytest.mark.parametrize(
    ("head", "metadata", "reason"),
    [
        pytest.param((3, "softmax"), {"kind": "classification", "classes": [0, 1, 2, 3]}, "class columns", id="classes"),
        pytest.param((2, None), {"kind": "regression", "targets": ["only"]}, "names 1 targets", id="targets"),
        pytest.param((1, None), {"kind": "regression", "features": ["a", "b"]}, "lists 2 features", id="features"),
        pytest.param((1, None), {"kind": "clustering"}, "unknown model kind", id="kind"),
    ],
)
def test_a_model_that_contradicts_its_metadata_is_rejected(head: tuple[int, str | None], metadata: dict[str, Any],
                                                            reason: str) -> None:
    with pytest.raises(ArtifactRejected, match=reason):
        predictor(model(dense(*head)), **metadata)


def test_the_jit_path_compiles_each_batch_size_in_the_background_and_agrees_with_the_plain_one() -> None:
    m = model(dense(1))
    jit = predictor(m, ServingSettings(jit_compile=True, max_batch_size=8), kind="regression")
    plain = predictor(m, ServingSettings(jit_compile=False), kind="regression")
    assert plain.xla is None and jit.xla is not None
    many = np.random.default_rng(1).normal(size=(21, 4)).astype(np.float32)
    batches = (X[:1], X[:3], X, many)
    for rows in batches:  # the first batch of each size runs the plain graph and queues that size's compile
        assert jit.predict(rows) == pytest.approx(plain.predict(rows), rel=1e-4, abs=1e-5)
    assert jit.xla.settle(timeout=60)
    assert jit.xla.enabled
    assert set(jit.xla.adopted) <= {1, 4, 8}  # 3 rows pad to 4, 5 to 8, and 21 go as 8 + 8 + 5
    for rows in batches:  # now through XLA wherever it was faster
        assert jit.predict(rows) == pytest.approx(plain.predict(rows), rel=1e-4, abs=1e-5)


def test_a_model_xla_cannot_compile_is_served_by_the_plain_graph(caplog: pytest.LogCaptureFixture) -> None:
    import keras
    import tensorflow as tf

    class HostOp(keras.layers.Layer):  # an op that runs Python on the host: XLA cannot compile it
        def call(self, x: Any) -> Any:
            y = tf.numpy_function(lambda a: (a * 2).astype(np.float32), [x], tf.float32)
            return tf.reshape(y, tf.shape(x))

    inputs = keras.Input((4,))
    m = keras.Model(inputs, keras.layers.Dense(1)(HostOp()(inputs)))
    p = predictor(m, ServingSettings(jit_compile=True, max_batch_size=8), kind="regression")
    expected = np.asarray(m(X, training=False))[:, 0].tolist()
    assert p.predict(X) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert p.xla is not None and p.xla.settle(timeout=60)
    assert not p.xla.enabled and p.xla.adopted == []
    assert any("cannot compile" in r.getMessage() for r in caplog.records)
    assert p.predict(X) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_graph_call_agrees_with_keras_on_every_batch_size_and_refuses_a_wrong_width() -> None:
    m = model(dense(1))
    p = predictor(m, kind="regression")
    many = np.random.default_rng(2).normal(size=(300, 4))  # float64, and more rows than one model call takes
    for rows in (X[:1], X, many):
        expected = np.asarray(m(rows.astype(np.float32), training=False))[:, 0]
        assert p.predict(rows) == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="4 features"):
        p.predict(np.zeros((2, 3), dtype=np.float32))  # the graph would not check it: the predictor does

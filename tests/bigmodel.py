"""A synthetic trainer for the big-model test: a Keras model of about 300 MB, fitted for one step.

10 inputs -> Dense(hidden_units[0]) -> Dense(hidden_units[1]) -> Dense(1): with [4096, 18340]
that is 75.2 million float32 weights (~300 MB), random enough that the archive stays that size.
"""

from __future__ import annotations

from skipper.modules.training.jobs import EpochReport, TrainJob, TrainResult

FEATURES = [f"x{i}" for i in range(10)]


def train(job: TrainJob) -> TrainResult:
    import keras
    import numpy as np

    first, second = [*job.params.hidden_units, 4096, 18340][:2]
    inputs = keras.Input((len(FEATURES),))
    hidden = keras.layers.Dense(second)(keras.layers.Dense(first, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer="sgd", loss="mse")  # no optimizer state: the model is the only big thing in memory
    rng = np.random.default_rng(0)
    history = model.fit(rng.normal(size=(16, len(FEATURES))).astype("float32"), rng.normal(size=(16, 1)),
                        epochs=1, batch_size=16, verbose=0)
    loss = float(history.history["loss"][-1])
    job.report_epoch(EpochReport(epoch=1, epochs=1, loss=loss, metrics={}))
    model.save(job.model_path)
    return TrainResult(features=FEATURES, targets=["y"], classes=None, metrics={"loss": loss},
                       parameters=int(model.count_params()))

"""The built-in trainer: a dense Keras 3 network with its input normalisation baked in.

Named by workflows as `skipper.modules.training.keras_trainer:train`. TensorFlow and Keras
are imported inside `train`, in the worker thread, so importing this module is cheap.

The model: Input(features) -> Normalization (adapted on the training split) -> Dense(relu)
[-> Dropout] ... -> regression: Dense(targets) -> Normalization(invert=True) (adapted on the
training targets, so the last Dense learns standardised values and the model still outputs
raw units); classification: Dense(classes, softmax). Serving feeds raw feature rows and
needs nothing but the `.keras` file.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from skipper.core.errors import ValidationFailed
from skipper.core.limits import check_train_limits
from skipper.modules.training.datasets import Dataset, load_dataset
from skipper.modules.training.jobs import EpochReport, TrainJob, TrainResult

if TYPE_CHECKING:
    from skipper.core.settings import TrainParams

log = logging.getLogger("skipper.training.keras")


def train(job: TrainJob) -> TrainResult:
    """Load the workflow's dataset, fit the model, save it to `job.model_path`, return its metrics."""
    workflow, params = job.workflow, job.params
    extra = {"correlation_id": job.correlation_id}
    data = load_dataset(workflow.dataset, workflow.kind, data_dir=job.data_dir)
    classification = workflow.kind == "classification"
    outputs = len(data.classes) if classification and data.classes else len(data.targets)
    check_train_limits(params, job.limits, n_inputs=len(data.features), n_outputs=outputs)  # exact, before allocating
    x_train, x_test, y_train, y_test = _split(data, params, classification)
    _check_validation_split(len(x_train), params.validation_split)
    monitor = _monitor(params, classification)

    import keras  # lazy: the worker thread pays TensorFlow's import, never the event loop

    keras.utils.set_random_seed(params.seed)  # process-wide: concurrent tasks share the RNGs
    model = build_model(keras, data, x_train, y_train, params, classification)
    if job.stop_requested():  # cancelled while the data loaded
        return TrainResult(data.features, data.targets, data.classes, cancelled=True)

    progress = _progress_callback(keras, job)
    callbacks: list[Any] = [progress]
    if params.early_stopping is not None and monitor is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                patience=params.early_stopping.patience,
                min_delta=params.early_stopping.min_delta,
                restore_best_weights=True,
            )
        )
    log.info(
        "training %s on %d rows (%d held out), %d features",
        job.workflow_name,
        len(x_train),
        len(x_test),
        len(data.features),
        extra=extra,
    )
    model.fit(
        x_train,
        y_train,
        epochs=params.epochs,
        batch_size=params.batch_size,
        validation_split=params.validation_split,
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    if job.stop_requested():
        return TrainResult(data.features, data.targets, data.classes, cancelled=True)
    if progress.diverged_at is not None:
        raise ValidationFailed(
            f"training diverged: the loss became NaN or infinite at epoch {progress.diverged_at}; try a lower learning_rate",
            details={"epoch": progress.diverged_at, "learning_rate": params.learning_rate},
        )

    metrics = evaluate(model, data, x_test, y_test, classification)
    metrics["epochs_trained"] = progress.epochs_done
    model.save(job.model_path)
    return TrainResult(data.features, data.targets, data.classes, metrics, parameters=int(model.count_params()))


def build_model(
    keras: Any,
    data: Dataset,
    x_train: npt.NDArray[np.float32],
    y_train: npt.NDArray[Any],
    params: TrainParams,
    classification: bool,
) -> Any:
    """The compiled model, its normalisation layers adapted on the training split."""
    inputs = keras.Input(shape=(len(data.features),), name="features", dtype="float32")
    normalize = keras.layers.Normalization(axis=-1, name="normalize")
    normalize.adapt(x_train)
    h = normalize(inputs)
    for i, units in enumerate(params.hidden_units, start=1):
        h = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(h)
        if params.dropout > 0:
            h = keras.layers.Dropout(params.dropout, seed=params.seed + i, name=f"dropout_{i}")(h)
    optimizer = keras.optimizers.Adam(learning_rate=params.learning_rate)
    if classification:
        assert data.classes is not None
        outputs = keras.layers.Dense(len(data.classes), activation="softmax", name="predictions")(h)
        model = keras.Model(inputs, outputs, name="skipper_classifier")
        # Sparse labels and a softmax head for two classes too: one code path for every classifier.
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    standardized = keras.layers.Dense(len(data.targets), name="standardized")(h)
    denormalize = keras.layers.Normalization(axis=-1, invert=True, name="predictions")
    denormalize.adapt(y_train)
    model = keras.Model(inputs, denormalize(standardized), name="skipper_regressor")
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    return model


def evaluate(
    model: Any, data: Dataset, x_test: npt.NDArray[np.float32], y_test: npt.NDArray[Any], classification: bool
) -> dict[str, Any]:
    """Metrics on the held-out split: rmse/mae (also per target when several), or accuracy/log_loss."""
    predicted = np.asarray(model.predict(x_test, batch_size=1024, verbose=0), dtype=np.float64)
    if classification:
        from sklearn.metrics import log_loss

        assert data.classes is not None
        accuracy = float(np.mean(np.argmax(predicted, axis=1) == y_test))
        proba = np.clip(predicted, 1e-7, 1.0)
        proba /= proba.sum(axis=1, keepdims=True)
        loss = float(log_loss(y_test, proba, labels=list(range(len(data.classes)))))
        return {"accuracy": accuracy, "log_loss": loss, "test_rows": len(y_test)}
    errors = predicted - np.asarray(y_test, dtype=np.float64)
    metrics: dict[str, Any] = {
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mae": float(np.mean(np.abs(errors))),
        "test_rows": len(y_test),
    }
    if len(data.targets) > 1:
        for j, target in enumerate(data.targets):
            metrics[f"rmse.{target}"] = float(np.sqrt(np.mean(errors[:, j] ** 2)))
            metrics[f"mae.{target}"] = float(np.mean(np.abs(errors[:, j])))
    return metrics


# --- helpers ------------------------------------------------------------------------------------


def _split(data: Dataset, params: TrainParams, classification: bool) -> tuple[Any, Any, Any, Any]:
    from sklearn.model_selection import train_test_split

    try:
        parts: list[Any] = train_test_split(
            data.x,
            data.y,
            test_size=params.test_size,
            random_state=params.seed,
            stratify=data.y if classification else None,
        )
    except ValueError as exc:  # too few rows, or a class too small to stratify
        raise ValidationFailed(
            f"cannot hold out test_size={params.test_size} of dataset {data.name!r} ({data.rows} rows): {exc}",
            details={"dataset": data.name, "rows": data.rows, "test_size": params.test_size},
        ) from None
    return parts[0], parts[1], parts[2], parts[3]


def _check_validation_split(train_rows: int, validation_split: float) -> None:
    """Keras refuses a split that leaves either side empty; say so before it does, as bad params."""
    if validation_split <= 0:
        return
    fit_rows = math.floor(train_rows * (1.0 - validation_split))
    if fit_rows < 1 or train_rows - fit_rows < 1:
        raise ValidationFailed(
            f"validation_split={validation_split} of {train_rows} training rows leaves an empty split",
            details={"train_rows": train_rows, "validation_split": validation_split},
        )


def _monitor(params: TrainParams, classification: bool) -> str | None:
    """The metric early stopping watches; falls back to training metrics without a validation split."""
    if params.early_stopping is None:
        return None
    metric = "accuracy" if classification else "mae"
    monitor = params.early_stopping.monitor
    if params.validation_split == 0 and monitor.startswith("val_"):
        monitor = monitor[len("val_") :]
    allowed = {"loss", metric} | ({"val_loss", f"val_{metric}"} if params.validation_split > 0 else set())
    if monitor not in allowed:
        raise ValidationFailed(
            f"early_stopping.monitor {params.early_stopping.monitor!r} is not a metric of this training; "
            f"choose one of {', '.join(sorted(allowed))}",
            details={"monitor": params.early_stopping.monitor, "allowed": sorted(allowed)},
        )
    return monitor


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _progress_callback(keras: Any, job: TrainJob) -> Any:
    """A callback reporting each epoch, stopping on cancellation (even mid-epoch) and on a NaN loss.

    Defined inside a function because its base class comes from Keras, which is imported lazily.
    """

    class Progress(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.epochs_done = 0
            self.diverged_at: int | None = None

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if job.stop_requested():
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if job.stop_requested():
                self.model.stop_training = True
                return  # a cancelled epoch may be partial: report nothing
            logs = logs or {}
            self.epochs_done = epoch + 1
            loss = _number(logs["loss"]) if "loss" in logs else None
            if "loss" in logs and loss is None:
                self.diverged_at = epoch + 1
                self.model.stop_training = True
            metrics = {k: _number(v) for k, v in logs.items() if k not in ("loss", "learning_rate")}
            job.report_epoch(EpochReport(epoch=epoch + 1, epochs=job.params.epochs, loss=loss, metrics=metrics))

    return Progress()

"""HTML forms of the dashboard: reading url-encoded posts, and the train form's fields.

The train form has one field per hyper-parameter; what a field holds is turned into the
JSON a train request carries, and the service validates it as it validates any train
request, so an error names the field (`params.epochs`) and is shown beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from skipper.core.errors import PayloadTooLarge, ValidationFailed
from skipper.core.settings import TrainParams

MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 200


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form post as {name: value} (the last value of a repeated name wins)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"form over {MAX_FORM_BYTES} bytes", details={"limit_bytes": MAX_FORM_BYTES})
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS))
    except (UnicodeDecodeError, ValueError):
        return {}


@dataclass(frozen=True, slots=True)
class Field:
    """One input of the train form."""

    name: str  # the form field's name and id
    label: str
    kind: str  # number | text
    step: str
    value: str
    help: str


HELP = {
    "epochs": "passes over the training data",
    "batch_size": "rows per gradient step",
    "learning_rate": "Adam's step size",
    "hidden_units": "units of each hidden layer, comma-separated",
    "dropout": "fraction dropped after each hidden layer",
    "test_size": "fraction held out to score the model",
    "validation_split": "fraction of training rows for val_loss",
    "early_stopping": "epochs without val_loss improvement before stopping; empty: off",
    "seed": "makes a run repeatable",
}


def train_fields(params: TrainParams, given: dict[str, str] | None = None) -> list[Field]:
    """The form's fields with the workflow's defaults (or what the user typed, when re-shown with errors)."""
    fields = []
    for name in TrainParams.model_fields:
        value = getattr(params, name)
        if name == "hidden_units":
            shown, kind, step = ", ".join(str(u) for u in value), "text", ""
        elif name == "early_stopping":
            shown, kind, step = (str(value.patience) if value is not None else ""), "number", "1"
        else:
            kind = "number"
            step = "any" if isinstance(value, float) else "1"
            shown = f"{value:g}" if isinstance(value, float) else str(value)
        if given is not None and name in given:
            shown = given[name]
        label = "early stopping patience" if name == "early_stopping" else name.replace("_", " ")
        fields.append(Field(name, label, kind, step, shown, HELP.get(name, "")))
    return fields


def train_params(form: dict[str, str], defaults: TrainParams) -> tuple[dict[str, Any], dict[str, str]]:
    """The `params` of a train request from the form, and errors by field for values that are not numbers."""
    params: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, field in TrainParams.model_fields.items():
        raw = form.get(name, "").strip()
        default = getattr(defaults, name)
        if name == "early_stopping":
            if not raw:
                params[name] = None
                continue
            try:
                patience = int(raw)
            except ValueError:
                errors[name] = "a whole number of epochs, or empty for none"
                continue
            base = default.model_dump() if default is not None else {}
            params[name] = {**base, "patience": patience}
            continue
        if not raw:
            continue  # the workflow's default
        try:
            if name == "hidden_units":
                params[name] = [int(part) for part in raw.replace(" ", "").split(",") if part]
            elif field.annotation is int:
                params[name] = int(raw)
            elif field.annotation is float:
                params[name] = float(raw)
            else:
                params[name] = raw
        except ValueError:
            errors[name] = "comma-separated whole numbers" if name == "hidden_units" else (
                "a whole number" if field.annotation is int else "a number")
    return params, errors


def field_errors(exc: ValidationFailed) -> dict[str, str]:
    """`params.epochs: ...` errors of the service as {form field: message}."""
    entries = exc.details.get("errors") or [{"field": exc.details.get("field", ""), "message": exc.message}]
    errors: dict[str, str] = {}
    for entry in entries:
        field = str(entry.get("field", "")).removeprefix("params.").split(".", 1)[0] or "_form"
        message = str(entry.get("message", exc.message))
        errors.setdefault(field, message.split(": ", 1)[-1] if message.startswith("params.") else message)
    return errors

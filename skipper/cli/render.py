"""Tables for people (rich); the commands print the server's JSON instead with --json."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from skipper.client import Model, ModelSummary, Predictions, TaskState, Workflow

STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta"}


def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.6g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def status(value: str) -> str:
    style = STATUS_STYLE.get(value)
    return f"[{style}]{value}[/]" if style else value


def metrics_text(metrics: Mapping[str, Any], limit: int = 4) -> str:
    shown = [f"{k} {number(v)}" for k, v in list(metrics.items())[:limit]]
    return "  ".join(shown) + ("  ..." if len(metrics) > limit else "")


def workflows(items: Iterable[Workflow]) -> Table:
    table = Table(title="Workflows")
    for column in ("workflow", "model", "kind", "dataset", "epochs", "description"):
        table.add_column(column)
    for w in items:
        dataset = w.dataset.get("name") or w.dataset.get("path") or w.dataset.get("source", "")
        table.add_row(w.name, w.model, w.kind, str(dataset), number(w.params.get("epochs")), w.description)
    return table


def tasks(items: Iterable[TaskState], total: int) -> Table:
    table = Table(title="Tasks", caption=f"{total} in all" if total else None)
    for column in ("task", "workflow", "status", "progress", "version", "created"):
        table.add_column(column, no_wrap=column == "task")
    for t in items:
        progress = f"{t.progress.epoch}/{t.progress.epochs}" if t.progress else "-"
        version = f"v{t.result.model_version}" if t.result else "-"
        table.add_row(t.task_id, t.workflow, status(t.status), progress, version, (t.created_at or "-")[:19])
    return table


def task(t: TaskState) -> Table:
    table = Table(title=f"Task {t.task_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("workflow", t.workflow)
    table.add_row("status", status(t.status))
    if t.progress:
        table.add_row("progress", f"epoch {t.progress.epoch}/{t.progress.epochs}  loss {number(t.progress.loss)}"
                      + (f"  val_loss {number(t.progress.val_loss)}" if t.progress.val_loss is not None else ""))
    if t.result:
        table.add_row("model", f"{t.result.model} v{t.result.model_version}")
        for name, value in t.result.metrics.items():
            table.add_row(f"  {name}", number(value))
    if t.error:
        table.add_row("error", f"[red]{t.error.message}[/] ({t.error.code})")
    table.add_row("params", number(t.params))
    table.add_row("attempts", str(t.attempts))
    for name in ("created_at", "started_at", "finished_at"):
        table.add_row(name.replace("_at", ""), getattr(t, name) or "-")
    return table


def metrics(values: Mapping[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in values.items():
        table.add_row(name, number(value))
    return table


def models(items: Iterable[ModelSummary]) -> Table:
    table = Table(title="Models")
    for column in ("model", "versions", "latest", "production"):
        table.add_column(column)
    for m in items:
        production = f"v{m.production_version}" if m.production_version is not None else "-"
        table.add_row(m.model, str(m.versions), number(m.latest_version), production)
    return table


def model(m: Model) -> Table:
    table = Table(title=f"Model {m.model}")
    for column in ("version", "production", "metrics", "created", "sha256", "task"):
        table.add_column(column)
    for v in m.versions:
        table.add_row(f"v{v.version}", "[green]serving[/]" if v.production else "", metrics_text(v.metrics),
                      (v.created_at or "-")[:19], v.sha256[:12], (v.task_id or "-")[:12])
    return table


def predictions(result: Predictions) -> Table:
    version = f" v{result.model_version}" if result.model_version is not None else ""
    table = Table(title=f"{result.model}{version}")
    table.add_column("#", justify="right")
    table.add_column("prediction")
    for i, prediction in enumerate(result):
        if isinstance(prediction, dict):
            text = "  ".join(f"{k} {number(v)}" for k, v in prediction.items())
        else:
            text = number(prediction)
        table.add_row(str(i), text)
    return table

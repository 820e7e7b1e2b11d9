"""The dashboard's Jinja2 environment and the filters its templates use."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2

DASH = "\u2013"  # an en dash: no value


def environment(templates: Path) -> jinja2.Environment:
    """Autoescaping, strict about undefined names, with `metric`, `duration` and `when`."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["metric"] = metric
    env.filters["duration"] = duration
    env.filters["when"] = when
    return env


def metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return DASH if value is None else str(value)


def duration(task: Any) -> str:
    if not task.started_at:
        return DASH
    start = dt.datetime.fromisoformat(task.started_at)
    end = dt.datetime.fromisoformat(task.finished_at) if task.finished_at else dt.datetime.now(dt.UTC)
    seconds = max(0.0, (end - start).total_seconds())
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def when(iso: str | None) -> str:
    return DASH if not iso else iso.replace("T", " ")[:19]

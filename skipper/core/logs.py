"""Logs with the correlation id of the request or task: JSON lines for machines, one readable line for people.

`log.format`: `json`, `text`, or `auto` (text when stdout is a terminal, JSON otherwise). JSON lines
never carry terminal colour codes, whoever logged them (uvicorn adds a coloured copy of some
messages; it is dropped, and escape sequences are stripped from every value).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return strip_ansi(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation_id and any `extra`."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "role": self._role,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if entry.get("correlation_id") is None:
            entry["correlation_id"] = correlation_id.get()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(_clean(entry), default=lambda v: strip_ansi(str(v)))


_LEVEL_COLOURS = {"DEBUG": "\x1b[2m", "INFO": "\x1b[32m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m",
                  "CRITICAL": "\x1b[1;31m"}
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


class TextFormatter(logging.Formatter):
    """`12:03:04.512 INFO  training  task 3f2c... trained  epoch=3 loss=0.42  cid=9a1b2c3d`, coloured on a terminal."""

    def __init__(self, *, colour: bool) -> None:
        super().__init__()
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        name = record.name.removeprefix("skipper.")
        extras = _extras(record)
        cid = extras.pop("correlation_id", None) or correlation_id.get()
        fields = "  ".join(f"{k.removeprefix('f_')}={_short(v)}" for k, v in extras.items() if v is not None)
        message = strip_ansi(record.getMessage())
        level = f"{record.levelname:<7}"
        if self._colour:
            level = f"{_LEVEL_COLOURS.get(record.levelname, '')}{level}{_RESET}"
            clock, name = f"{_DIM}{clock}{_RESET}", f"{_DIM}{name:<10}{_RESET}"
        else:
            name = f"{name:<10}"
        line = f"{clock} {level} {name} {message}"
        if fields:
            line += f"  {_DIM if self._colour else ''}{fields}{_RESET if self._colour else ''}"
        if cid:
            line += f"  {_DIM if self._colour else ''}cid={str(cid)[:12]}{_RESET if self._colour else ''}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def wants_text(fmt: str, stream: TextIO) -> bool:
    """Whether `log.format` (auto, json, text) means one readable line, for this stream."""
    if fmt == "auto":
        return stream.isatty()
    return fmt == "text"


def configure_logging(level: str, *, json_lines: bool = True, role: str, fmt: str = "auto",
                      stream: TextIO | None = None) -> None:
    """Route every logger to stdout: JSON lines, or readable text (`fmt`; `json_lines=False` forces text)."""
    out = stream or sys.stdout
    handler = logging.StreamHandler(out)
    if not json_lines or wants_text(fmt, out):
        colour = out.isatty() and "NO_COLOR" not in os.environ
        handler.setFormatter(TextFormatter(colour=colour))
    else:
        handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pika", "uvicorn.access", "dramatiq", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))

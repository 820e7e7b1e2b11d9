"""The composition root, beside `skipper.core`: wires settings, the transport and the modules into a process.

`skipper.core` is the shared kernel and imports neither a transport nor a module; this package
does both (lazily, by import path, so a role loads only what it runs).
"""

from __future__ import annotations

from skipper.app.container import Container
from skipper.app.runtime import Runtime

__all__ = ["Container", "Runtime"]

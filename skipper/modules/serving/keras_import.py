"""Keras (and with it TensorFlow) imported for serving, optionally without scikit-learn.

Keras 3 imports scikit-learn whenever it is installed, for its scikit-learn wrappers
(`keras.wrappers`), and scikit-learn brings SciPy's statistics with it: about 0.55 s of the
2.6-2.8 s that importing TensorFlow and Keras takes on the CI machine, a seventh of a server's
start-up with two models to load. A server never uses those wrappers. So in a process that does
not also train (the trainer loads scikit-learn's datasets), scikit-learn is kept out while Keras
imports, and importable again right after: a custom predictor may still use it; only Keras's own
scikit-learn wrappers stay without it in that process.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

from skipper.core.roles import parse_roles

_lock = threading.Lock()  # installs run in worker threads: one of them imports, the others wait


def import_keras(*, without_sklearn: bool) -> ModuleType:
    """The `keras` module, imported now if it was not; with `without_sklearn`, scikit-learn stays out of that import."""
    with _lock:
        if "keras" in sys.modules or not without_sklearn or "sklearn" in sys.modules:
            return importlib.import_module("keras")
        sys.modules["sklearn"] = None  # type: ignore[assignment]  # Python's way to fail an import: as if absent
        try:
            return importlib.import_module("keras")
        finally:
            if "sklearn" in sys.modules and sys.modules["sklearn"] is None:
                del sys.modules["sklearn"]  # importable again from here on


def trains_here(role: str) -> bool:
    """Whether a process of `role` (a role label: `all`, `server`, `trainer,server`, ...) also runs the trainer."""
    return "trainer" in parse_roles(role)

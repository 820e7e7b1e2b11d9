"""Serving: model store, safe install and hot swap, micro-batching, predictions.

Entry point: `ServingModule`. Imports only `skipper.core`; TensorFlow is imported lazily,
when the first model is loaded.
"""

from __future__ import annotations

from skipper.modules.serving.module import ServingModule

__all__ = ["ServingModule"]

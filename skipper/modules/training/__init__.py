"""Training: consumes train commands, trains Keras models in worker threads, sends artifacts.

Imports nothing heavy: TensorFlow and Keras load in the worker thread on first use.
"""

from __future__ import annotations

from skipper.modules.training.module import TrainingModule

__all__ = ["TrainingModule"]

"""The one import-path resolver: `package.module:attribute` names a class or function in configuration.

    resolve("skipper_plugins.trainers:train")        # -> the function, its module imported now
    resolve("pkg.mod:Outer.inner", what="trainer")   # a dotted attribute walks nested objects

Used for trainers, predictors, transports and the composition root's modules, so a process imports
only what it runs (the api role never imports TensorFlow). Every failure is a `ConfigError` naming
the path and what it was meant to be.
"""

from __future__ import annotations

import importlib
from typing import Any

from skipper.core.errors import ConfigError


def resolve(path: str, *, what: str = "import path") -> Any:
    """The object `path` (`package.module:attribute`) names, imported on first use.

    Raises `ConfigError` (details `{what: path}`) when the path is malformed, the module cannot be
    imported, the attribute is missing or the object is not callable.
    """
    details = {what.replace(" ", "_"): path}
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {path!r} must look like 'package.module:name'", details=details)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {what} module {module_name!r}: {exc}", details=details) from None
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{what} {path!r} not found: {module_name} has no {attr!r}", details=details)
    if not callable(target):
        raise ConfigError(f"{what} {path!r} is not callable", details=details)
    return target

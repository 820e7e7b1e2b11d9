"""Each model's feature names, cached for the predict hot path."""

from __future__ import annotations

import asyncio
from typing import Any

from skipper.core.errors import ModelNotReady, NotFound
from skipper.core.repositories import ModelRegistry
from skipper.core.settings import Workflow


class ModelSchemas:
    """Feature names of each model's production version, cached for the predict hot path."""

    def __init__(self, registry: ModelRegistry, workflows: dict[str, Workflow]) -> None:
        self._registry = registry
        self._known = {w.model for w in workflows.values()}
        self._features: dict[str, list[str]] = {}

    def known(self, model: str) -> bool:
        """A model a workflow produces or the registry has served: safe to use as a metric label."""
        return model in self._known

    def width(self, model: str) -> int:
        """The production version's feature count when cached, else 1 (a lower bound for limits)."""
        return len(self._features.get(model) or ()) or 1

    def update(self, model: str, metadata: dict[str, Any]) -> None:
        if metadata.get("features"):
            self._features[model] = list(metadata["features"])
            self._known.add(model)

    async def features(self, model: str) -> list[str]:
        cached = self._features.get(model)
        if cached is not None:
            return cached
        versions = await asyncio.to_thread(self._registry.production, model)
        if versions:
            self.update(model, versions[0].metadata)
            return self._features[model]
        if model in self._known:
            raise ModelNotReady(f"model {model!r} has no trained version yet; train its workflow first",
                                details={"model": model})
        raise NotFound(f"unknown model {model!r}", details={"model": model})

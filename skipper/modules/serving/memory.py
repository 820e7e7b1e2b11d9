"""The memory guard: a swap must fit beside what the server holds, or the pod is OOM-killed.

A swap loads the new version while the old one still serves, so for a moment both are in
memory, plus what loading itself costs. Measured on this project's stack (TF 2.21, Keras 3.15,
float32 `.keras` models of 4 to 64 MB of weights, each loaded in a fresh process, traced and
warmed up): the resident set grew by 4.2x the weight bytes plus ~10 MB, and peaked at 7.1x the
weight bytes plus ~10 MB during the load; the archive, in memory while it is verified and
extracted, adds about one more. The guard counts a held version as `RESIDENT_FACTOR` times its
weights and the version being loaded as `LOAD_FACTOR` times, each plus `OVERHEAD_MB`, and
refuses a load that would take the total over the budget. (Over 50 swaps between two versions
of a 64 MB model the resident set stayed flat, 988 -> 992 MB: a swapped-out version is freed.)

The weights come from the artifact's metadata (`parameters` x 4 bytes, or `model_bytes`, the
size of `model.keras`, whichever is larger), else from the archive's size. The budget is
`serving.memory_budget_mb`; unset, it is the container's memory limit (`serving.memory_limit_mb`,
which Kubernetes can fill from the resource limit, else the cgroup v2 or v1 limit) minus
`serving.memory_headroom_mb` for the process itself (Python with TensorFlow loaded is ~560 MB);
with no limit anywhere the guard is off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skipper.core.errors import ArtifactRejected
from skipper.core.settings import ServingSettings

log = logging.getLogger("skipper.serving")

RESIDENT_FACTOR = 4.5
LOAD_FACTOR = 8.0
OVERHEAD_MB = 16.0
_MB = 1024 * 1024
_UNLIMITED_V1 = 1 << 60  # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)


@dataclass(frozen=True, slots=True)
class Footprint:
    """The memory one model version takes, by its weight bytes."""

    weights_mb: float

    @property
    def resident_mb(self) -> float:
        return self.weights_mb * RESIDENT_FACTOR + OVERHEAD_MB

    @property
    def peak_mb(self) -> float:
        return self.weights_mb * LOAD_FACTOR + OVERHEAD_MB


def footprint(metadata: dict[str, Any], archive_bytes: int) -> Footprint:
    """A version's footprint from its announced metadata, falling back on the archive's size."""
    known = [n for n in (_count(metadata.get("parameters"), 4), _count(metadata.get("model_bytes"), 1)) if n]
    return Footprint((max(known) if known else max(0, archive_bytes)) / _MB)


def _count(value: Any, scale: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value * scale
    return None


def memory_limit_mb(configured: float | None, *, cgroup_root: Path = Path("/sys/fs/cgroup"),
                    proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[float | None, str]:
    """This container's memory limit in MiB and where it was found; (None, why) when there is none."""
    if configured is not None:
        return configured, "serving.memory_limit_mb"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    limits: list[tuple[int, str]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: the tightest memory.max from here up to the root
            limits += _v2_limits(cgroup_root, path)
        elif "memory" in controllers.split(","):  # cgroup v1
            limits += _v1_limits(cgroup_root / "memory", path)
    if not lines:  # no /proc (or another OS): the conventional paths of a container
        limits += _v2_limits(cgroup_root, "/") + _v1_limits(cgroup_root / "memory", "/")
    if not limits:
        return None, "no cgroup memory limit"
    size, source = min(limits)
    return size / _MB, source


def _v2_limits(root: Path, path: str) -> list[tuple[int, str]]:
    found = []
    node = root / path.strip("/")
    while True:
        value = _read(node / "memory.max")
        if value is not None and value != "max" and value.isdigit():
            found.append((int(value), str(node / "memory.max")))
        if node == root or root not in node.parents:
            return found
        node = node.parent


def _v1_limits(root: Path, path: str) -> list[tuple[int, str]]:
    found = []
    for node in (root / path.strip("/"), root):
        value = _read(node / "memory.limit_in_bytes")
        if value is not None and value.isdigit() and int(value) < _UNLIMITED_V1:
            found.append((int(value), str(node / "memory.limit_in_bytes")))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class MemoryGuard:
    """Refuses a load that would take the models held, plus it, over the budget (None: no budget)."""

    def __init__(self, budget_mb: float | None) -> None:
        self.budget_mb = budget_mb

    @classmethod
    def from_settings(cls, serving: ServingSettings) -> MemoryGuard:
        if serving.memory_budget_mb is not None:
            log.info("memory budget for models: %.0f MiB (serving.memory_budget_mb)", serving.memory_budget_mb)
            return cls(serving.memory_budget_mb)
        limit, source = memory_limit_mb(serving.memory_limit_mb)
        if limit is None:
            log.info("no memory limit found (%s): the memory guard is off", source)
            return cls(None)
        budget = max(0.0, limit - serving.memory_headroom_mb)
        log.info("memory budget for models: %.0f MiB (limit %.0f MiB from %s, minus %.0f MiB headroom)",
                 budget, limit, source, serving.memory_headroom_mb)
        return cls(budget)

    def check(self, model: str, version: int, new: Footprint, *, held: list[Footprint],
              loading: list[Footprint]) -> None:
        """Raise `ArtifactRejected` (with the figures) when `new` cannot load beside what is held and loading."""
        if self.budget_mb is None:
            return
        held_mb = sum(f.resident_mb for f in held) + sum(f.peak_mb for f in loading)
        if held_mb + new.peak_mb <= self.budget_mb:
            return
        raise ArtifactRejected(
            f"{model} v{version} needs about {new.peak_mb:.0f} MiB to load ({new.weights_mb:.1f} MiB of weights) "
            f"beside the {held_mb:.0f} MiB held; the memory budget is {self.budget_mb:.0f} MiB",
            details={"needed_mb": round(new.peak_mb, 1), "held_mb": round(held_mb, 1),
                     "budget_mb": round(self.budget_mb, 1), "weights_mb": round(new.weights_mb, 1)},
        )

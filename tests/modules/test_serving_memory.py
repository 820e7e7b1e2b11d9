"""The memory guard: a version's footprint, the container's limit (cgroup v2 and v1), the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from skipper.core.errors import ArtifactRejected
from skipper.core.settings import ServingSettings
from skipper.modules.serving.memory import (
    LOAD_FACTOR,
    OVERHEAD_MB,
    RESIDENT_FACTOR,
    Footprint,
    MemoryGuard,
    footprint,
    memory_limit_mb,
)

MB = 1024 * 1024


def test_a_footprint_comes_from_the_parameter_count_or_the_model_size_whichever_is_larger() -> None:
    assert footprint({"parameters": 10 * MB}, archive_bytes=1).weights_mb == 40  # float32
    assert footprint({"parameters": 1 * MB, "model_bytes": 8 * MB}, archive_bytes=1).weights_mb == 8
    # An artifact without them (an older one, a plug-in trainer): its archive's size
    assert footprint({}, archive_bytes=3 * MB).weights_mb == 3
    assert footprint({"parameters": "lots", "model_bytes": -1}, archive_bytes=2 * MB).weights_mb == 2
    ten = Footprint(10)
    assert ten.resident_mb == 10 * RESIDENT_FACTOR + OVERHEAD_MB
    assert ten.peak_mb == 10 * LOAD_FACTOR + OVERHEAD_MB


def cgroup_tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, value in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(value + "\n")
    proc_file = tmp_path / "proc-self-cgroup"
    proc_file.write_text(proc)
    return root, proc_file


def test_the_limit_is_the_tightest_cgroup_v2_memory_max_on_the_way_to_the_root(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, {"kubepods/memory.max": str(4096 * MB), "kubepods/pod1/c1/memory.max": str(2048 * MB),
                                        "kubepods/pod1/memory.max": "max"}, "0::/kubepods/pod1/c1\n")
    limit, source = memory_limit_mb(None, cgroup_root=root, proc_cgroup=proc)
    assert limit == 2048 and source.endswith("kubepods/pod1/c1/memory.max")
    # a container with its own cgroup namespace sees itself at the root
    root, proc = cgroup_tree(tmp_path / "ns", {"memory.max": str(512 * MB)}, "0::/\n")
    assert memory_limit_mb(None, cgroup_root=root, proc_cgroup=proc)[0] == 512


def test_a_cgroup_v1_limit_is_read_and_its_no_limit_value_is_no_limit(tmp_path: Path) -> None:
    proc = "4:memory:/docker/abc\n3:cpu:/docker/abc\n0::/\n"
    root, proc_file = cgroup_tree(tmp_path, {"memory/docker/abc/memory.limit_in_bytes": str(1024 * MB)}, proc)
    assert memory_limit_mb(None, cgroup_root=root, proc_cgroup=proc_file)[0] == 1024
    root, proc_file = cgroup_tree(tmp_path / "none", {"memory/docker/abc/memory.limit_in_bytes": "9223372036854771712",
                                                      "memory/memory.limit_in_bytes": "9223372036854771712"}, proc)
    assert memory_limit_mb(None, cgroup_root=root, proc_cgroup=proc_file) == (None, "no cgroup memory limit")


def test_a_configured_limit_wins_over_the_cgroup(tmp_path: Path) -> None:
    root, proc = cgroup_tree(tmp_path, {"memory.max": str(512 * MB)}, "0::/\n")
    assert memory_limit_mb(3000, cgroup_root=root, proc_cgroup=proc) == (3000, "serving.memory_limit_mb")


def test_the_budget_is_the_setting_or_the_limit_minus_headroom_or_none() -> None:
    assert MemoryGuard.from_settings(ServingSettings(memory_budget_mb=700)).budget_mb == 700
    assert MemoryGuard.from_settings(ServingSettings(memory_limit_mb=2048, memory_headroom_mb=768)).budget_mb == 1280


def test_the_guard_refuses_a_load_that_would_not_fit_beside_what_is_held_and_loading() -> None:
    guard = MemoryGuard(1000)
    held = [Footprint(50)]  # 241 MiB resident
    guard.check("m", 2, Footprint(50), held=held, loading=[])  # peak 416: 657 in all, fits
    with pytest.raises(ArtifactRejected, match=r"m v2 needs about 416 MiB to load .* beside the 657 MiB held; the memory "
                                               r"budget is 1000 MiB") as refused:
        guard.check("m", 2, Footprint(50), held=held, loading=[Footprint(50)])
    assert refused.value.details == {"needed_mb": 416.0, "held_mb": 657.0, "budget_mb": 1000.0, "weights_mb": 50.0}
    MemoryGuard(None).check("m", 2, Footprint(10**6), held=held, loading=[])  # no budget: no guard

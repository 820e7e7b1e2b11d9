"""Packaging a trained model as an artifact (format: `skipper.core.artifacts`).

A gzip'd tar holding exactly `model.keras` then `skipper.json`, as plain files with fixed
owners, modes and times, so the archive depends only on its two members' bytes. The version
is not in it: the registry assigns versions when it stores the artifact.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import json
import math
import platform
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import skipper
from skipper.core import artifacts

# Distribution names to try for each library (the TensorFlow wheel may be a CPU-only flavour).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "scikit-learn": ("scikit-learn",),
}


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape a saved model, read without importing them."""
    versions: dict[str, str | None] = {}
    for name, dists in _DISTRIBUTIONS.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    versions["python"] = platform.python_version()
    versions["skipper"] = skipper.__version__
    return versions


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None (strict JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def build_metadata(
    *,
    name: str,
    workflow: str,
    kind: str,
    features: list[str],
    targets: list[str],
    classes: list[str] | None,
    metrics: dict[str, Any],
    params: dict[str, Any],
    task_id: str,
    parameters: int | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The `skipper.json` document (`parameters`: the model's parameter count, when the trainer gave it)."""
    return {
        "name": name,
        "workflow": workflow,
        "kind": kind,
        "features": list(features),
        "targets": list(targets),
        "classes": list(classes) if classes is not None else None,
        "metrics": json_safe(metrics),
        "params": json_safe(params),
        "library_versions": library_versions(),
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
        "task_id": task_id,
        "parameters": parameters,
    }


def package_file(model_path: Path, metadata: dict[str, Any], archive: Path) -> tuple[int, str, dict[str, Any]]:
    """Archive the saved model and its metadata into the file `archive`, streaming: (size, sha256 hex, metadata).

    The same bytes as `package` gives, written through a file rather than held in memory, so a
    model of hundreds of megabytes costs the trainer one read buffer, not two copies of itself.
    """
    metadata = {**metadata, "model_bytes": model_path.stat().st_size}
    meta_bytes = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")
    with open(archive, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        with open(model_path, "rb") as model:
            tar.addfile(_member(artifacts.MODEL_FILE, metadata["model_bytes"]), model)
        tar.addfile(_member(artifacts.METADATA_FILE, len(meta_bytes)), io.BytesIO(meta_bytes))
    size, sha256 = artifacts.file_digest(archive)
    return size, sha256, metadata


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.type = tarfile.REGTYPE
    return info


def package(model_path: Path, metadata: dict[str, Any]) -> tuple[bytes, str, dict[str, Any]]:
    """Archive the saved model and its metadata: (archive bytes, sha256 hex, metadata).

    The metadata gains `model_bytes`, the size of `model.keras`, which servers use with
    `parameters` to size a version's memory before loading it.
    """
    model_bytes = model_path.read_bytes()
    metadata = {**metadata, "model_bytes": len(model_bytes)}
    meta_bytes = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")
    buf = io.BytesIO()
    # mtime=0 and fixed tar headers: the archive's bytes depend on the members' bytes only.
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for member, data in ((artifacts.MODEL_FILE, model_bytes), (artifacts.METADATA_FILE, meta_bytes)):
            tar.addfile(_member(member, len(data)), io.BytesIO(data))
    archive = buf.getvalue()
    return archive, artifacts.sha256_of(archive), metadata

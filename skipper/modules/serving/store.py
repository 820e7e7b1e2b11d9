"""Safe install of an artifact: verify, extract into a fresh directory, load, warm up.

Everything here is blocking and runs in a worker thread; the swap itself happens on the event
loop (see `module.py`). Any failure raises `ArtifactRejected` with the reason and leaves no
directory behind, so the model already serving is untouched.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import numpy as np

from skipper.core import artifacts, heap
from skipper.core.errors import ArtifactRejected, SkipperError
from skipper.core.settings import Settings
from skipper.modules.serving.keras_import import import_keras
from skipper.modules.serving.predictor import Predictor, PredictorFactory

log = logging.getLogger("skipper.serving")

MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 1024 * 1024
# Tar headers, padding and the end-of-archive blocks on top of the two members' contents.
_TAR_OVERHEAD = 64 * 1024
# Above this cost for a full batch the model runs in a worker thread rather than on the loop.
INLINE_BUDGET_MS = 2.0


@dataclass(slots=True)
class Prepared:
    """A loaded, warmed-up model, ready to be swapped in."""

    name: str
    version: int
    sha256: str
    seq: int
    directory: Path
    metadata: dict[str, Any]
    predictor: Predictor
    batch_ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def serving_root(settings: Settings) -> Path:
    return settings.data_dir / "serving"


def check_model_name(name: object) -> str:
    """Model names become directory names: allow only a safe alphabet."""
    if not isinstance(name, str) or not MODEL_NAME.match(name) or name in {".", ".."}:
        raise ArtifactRejected(f"invalid model name {name!r}")
    return name


def verify(data: bytes, *, sha256: str, max_bytes: int) -> None:
    """Refuse archives that are too large or whose checksum differs from the published one."""
    if len(data) > max_bytes:
        raise ArtifactRejected(
            f"artifact is {len(data)} bytes, over the {max_bytes}-byte limit",
            details={"size": len(data), "limit": max_bytes},
        )
    actual = artifacts.sha256_of(data)
    if actual != sha256:
        raise ArtifactRejected("artifact sha256 does not match the published checksum",
                               details={"expected": sha256, "actual": actual})


def verify_file(path: Path, *, sha256: str, max_bytes: int) -> None:
    """`verify` for an archive on disk, read in chunks."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ArtifactRejected(f"artifact is {size} bytes, over the {max_bytes}-byte limit",
                               details={"size": size, "limit": max_bytes})
    actual = artifacts.file_digest(path)[1]
    if actual != sha256:
        raise ArtifactRejected("artifact sha256 does not match the published checksum",
                               details={"expected": sha256, "actual": actual})


def extract(data: bytes | Path, into: Path, *, max_member_bytes: int) -> None:
    """Extract exactly the artifact's two regular files into the empty directory `into`.

    Streams the archive (`r|gz`) through a cap on decompressed bytes so a gzip bomb stops
    early, and counts each member's bytes while copying rather than trusting its header.
    """
    limit = len(artifacts.MEMBERS) * max_member_bytes + _TAR_OVERHEAD
    seen: set[str] = set()
    try:
        with (open(data, "rb") if isinstance(data, Path) else io.BytesIO(data)) as raw, \
                tarfile.open(fileobj=_Capped(gzip.GzipFile(fileobj=raw, mode="rb"), limit), mode="r|") as tar:
            for member in tar:
                name = _check_member(member, seen, max_member_bytes)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have a reader
                    raise ArtifactRejected(f"archive member {name!r} has no content")
                _copy(source, into / name, declared=member.size, limit=max_member_bytes)
                seen.add(name)
    except ArtifactRejected:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ArtifactRejected(f"artifact is not a valid tar.gz archive: {exc}") from exc
    missing = artifacts.MEMBERS - seen
    if missing:
        raise ArtifactRejected(f"artifact lacks {sorted(missing)}")


def prepare(
    data: bytes | Path,
    *,
    name: str,
    version: int,
    sha256: str,
    seq: int,
    settings: Settings,
    factory: PredictorFactory,
    without_sklearn: bool = False,
) -> Prepared:
    """Verify, extract, load (Keras safe mode), wrap and warm up; blocking, run it in a thread.

    `data`: the archive's bytes (a small, inline artifact) or the file it was streamed to.
    `without_sklearn`: Keras's first import leaves scikit-learn out (`keras_import`).
    """
    serving = settings.serving
    timings: dict[str, float] = {}
    lap = _Lap(timings)
    if isinstance(data, Path):
        verify_file(data, sha256=sha256, max_bytes=serving.max_artifact_bytes)
    else:
        verify(data, sha256=sha256, max_bytes=serving.max_artifact_bytes)
    directory = serving_root(settings) / f"{check_model_name(name)}-{version}-{sha256[:12]}-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, mode=0o700)
        extract(data, directory, max_member_bytes=serving.max_member_bytes)
        lap("verify_extract_ms")
        metadata = _read_metadata(directory / artifacts.METADATA_FILE, name)
        keras = import_keras(without_sklearn=without_sklearn)
        model = keras.saving.load_model(directory / artifacts.MODEL_FILE, compile=False, safe_mode=True)
        lap("load_ms")
        predictor = factory(model, metadata, serving)
        predictor.warm_up()
        batch_ms = _time_full_batch(predictor, serving.max_batch_size)
        lap("warm_up_ms")
        # TF leaves many long-lived objects behind; freezing them keeps gen-2 collections short.
        heap.freeze()
    except BaseException as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if isinstance(exc, ArtifactRejected):
            raise
        if isinstance(exc, Exception):
            reason = exc.message if isinstance(exc, SkipperError) else f"{type(exc).__name__}: {exc}"
            raise ArtifactRejected(f"model could not be loaded: {reason}") from exc
        raise
    return Prepared(name, version, sha256, seq, directory, metadata, predictor, batch_ms, timings)


def remove(directory: Path) -> None:
    """Delete a retired model's directory; the model itself lives in memory."""
    shutil.rmtree(directory, ignore_errors=True)


def recollect() -> None:
    """Let the collector reclaim a retired model (frozen objects are never collected)."""
    heap.refreeze()


# --- internals ---------------------------------------------------------------------------


class _Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _Capped(io.RawIOBase):
    """A reader that fails once more than `limit` bytes have been read from `inner`."""

    def __init__(self, inner: _Reader, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        chunk = self._inner.read(want)
        self._left -= len(chunk)
        if self._left < 0:
            raise ArtifactRejected("artifact expands beyond the size its members may have")
        return chunk


def _check_member(member: tarfile.TarInfo, seen: set[str], max_member_bytes: int) -> str:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise ArtifactRejected(f"archive member {name!r} has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise ArtifactRejected(f"archive member {name!r} escapes the target directory")
    if member.issym() or member.islnk():
        raise ArtifactRejected(f"archive member {name!r} is a link")
    if member.isdev():
        raise ArtifactRejected(f"archive member {name!r} is a device")
    if not member.isreg():
        raise ArtifactRejected(f"archive member {name!r} is not a regular file")
    if name not in artifacts.MEMBERS:
        raise ArtifactRejected(f"unexpected archive member {name!r}; expected only {sorted(artifacts.MEMBERS)}")
    if name in seen:
        raise ArtifactRejected(f"archive member {name!r} appears twice")
    if member.size > max_member_bytes:
        raise ArtifactRejected(f"archive member {name!r} is {member.size} bytes, over the {max_member_bytes}-byte limit")
    return name


def _copy(source: IO[bytes], target: Path, *, declared: int, limit: int) -> None:
    # O_EXCL: never follow or overwrite anything already at the target path.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > min(declared, limit):
                raise ArtifactRejected(f"archive member {target.name!r} holds more bytes than allowed")
            out.write(chunk)
    if written != declared:
        raise ArtifactRejected(f"archive member {target.name!r} is truncated")


def _read_metadata(path: Path, name: str) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactRejected(f"{artifacts.METADATA_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ArtifactRejected(f"{artifacts.METADATA_FILE} must hold a JSON object")
    if metadata.get("name") not in (None, name):
        log.warning("artifact metadata names model %r, installing it as %r", metadata.get("name"), name)
    return metadata


def _time_full_batch(predictor: Predictor, rows: int) -> float:
    batch = np.zeros((rows, predictor.n_features), dtype=np.float32)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        predictor.predict(batch)
        best = min(best, (time.perf_counter() - started) * 1000)
    return best


class _Lap:
    """Records how long each phase of an install took."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self._into[phase] = round((now - self._last) * 1000, 1)
        self._last = now

"""The api's artifact store: one file per artifact under the data dir, named by its sha256.

It refuses any path that resolves outside its root (a crafted model name, a tampered path
in the database, a link), so the store can only ever write and serve its own files.

Large artifacts arrive in chunks (`write_chunk`, then `commit`) and leave in ranges (`read_range`),
so the api never holds a whole big artifact in memory; api replicas sharing the store (a
ReadWriteMany volume) may each take some of an upload's chunks, as each is written at its offset.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from skipper.core.artifacts import file_digest
from skipper.core.errors import ArtifactRejected, NotFound

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD = re.compile(r"^[0-9a-f]{16,64}$")
# Every chunk written touches its part file: one untouched this long lost its trainer mid-upload.
ABANDONED_AFTER_S = 3600.0


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def inside(self, path: Path) -> Path:
        """`path` resolved, if it lies under the root; `ArtifactRejected` otherwise."""
        root, resolved = self.root.resolve(), path.resolve()
        if not resolved.is_relative_to(root) or resolved == root:
            raise ArtifactRejected(f"artifact path {path} is outside the artifact store")
        return resolved

    def put(self, model: str, sha256: str, data: bytes) -> Path:
        """Write atomically (temp file + rename) so a crash never leaves half an artifact."""
        if not _SHA256.match(sha256):
            raise ArtifactRejected(f"artifact sha256 {sha256[:80]!r} is not a hex SHA-256")
        directory = self.root / model
        self.inside(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{sha256}.tar.gz"
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return path

    def write_chunk(self, model: str, upload: str, offset: int, data: bytes, *, max_bytes: int) -> None:
        """Write one chunk of upload `upload` at `offset` (idempotent: a redelivered chunk rewrites the same bytes)."""
        if offset < 0 or offset + len(data) > max_bytes:
            raise ArtifactRejected(f"artifact chunk at {offset} goes past the {max_bytes}-byte limit",
                                   details={"limit": max_bytes})
        fd = os.open(self._part(model, upload), os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def commit(self, model: str, upload: str, sha256: str, size: int) -> Path:
        """Check a finished upload's size and checksum (read in chunks), then move it into place."""
        if not _SHA256.match(sha256):
            raise ArtifactRejected(f"artifact sha256 {sha256[:80]!r} is not a hex SHA-256")
        part = self._part(model, upload)
        path = part.parent / f"{sha256}.tar.gz"
        if not part.exists() and path.is_file() and path.stat().st_size == size:
            return path  # committed already: a redelivered `model.artifact`
        try:
            actual_size, actual = file_digest(part)
        except FileNotFoundError:
            raise ArtifactRejected(f"upload {upload} has no chunks") from None
        if actual_size != size or actual != sha256:
            part.unlink(missing_ok=True)
            raise ArtifactRejected("uploaded artifact does not match its size and checksum",
                                   details={"size": actual_size, "expected_size": size, "sha256": actual})
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, path)
        self.sweep_abandoned(model)
        return path

    def sweep_abandoned(self, model: str, *, older_than_s: float = ABANDONED_AFTER_S) -> int:
        """Remove `model`'s partial files (uploads, interrupted writes) untouched for `older_than_s`; how many.

        A trainer killed mid-upload never commits, and its retry uploads under a new id: without
        this, each such death would leave up to a whole artifact's worth of disk behind.
        """
        directory = self.inside(self.root / model)
        cutoff = time.time() - older_than_s
        removed = 0
        for partial in [*directory.glob(".upload-*.part"), *directory.glob(".incoming-*")]:
            try:
                if partial.stat().st_mtime < cutoff:
                    partial.unlink()
                    removed += 1
            except FileNotFoundError:  # another api replica sharing the store got there first
                continue
        return removed

    def _part(self, model: str, upload: str) -> Path:
        if not _UPLOAD.match(upload):
            raise ArtifactRejected(f"upload id {upload[:80]!r} is not a hex id")
        directory = self.root / model
        self.inside(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f".upload-{upload}.part"

    def read_range(self, path: str, offset: int, length: int) -> tuple[bytes, int]:
        """`length` bytes from `offset` of a stored artifact, and the artifact's whole size."""
        try:
            with open(self.inside(Path(path)), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, offset))
                return f.read(max(0, length)), size
        except FileNotFoundError:
            raise NotFound(f"artifact file {Path(path).name} is missing from the store") from None

    def read(self, path: str) -> bytes:
        try:
            return self.inside(Path(path)).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact file {Path(path).name} is missing from the store") from None


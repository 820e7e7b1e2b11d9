"""The api's artifact store: one file per artifact under the data dir, named by its sha256.

It refuses any path that resolves outside its root (a crafted model name, a tampered path
in the database, a link), so the store can only ever write and serve its own files.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from skipper.core.errors import ArtifactRejected, NotFound

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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

    def read(self, path: str) -> bytes:
        try:
            return self.inside(Path(path)).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact file {Path(path).name} is missing from the store") from None

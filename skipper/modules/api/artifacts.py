"""The api's artifact store: one file per artifact under the data dir, named by its sha256."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from skipper.core.errors import NotFound


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, model: str, sha256: str, data: bytes) -> Path:
        """Write atomically (temp file + rename) so a crash never leaves half an artifact."""
        directory = self.root / model
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
            return Path(path).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact file {Path(path).name} is missing from the store") from None

"""The artifact format shared by the trainer (writes), registry (stores) and server (installs).

An artifact is one gzip'd tar archive holding exactly two regular files:
`model.keras` (the Keras 3 model, normalisation baked in) and `skipper.json` (metadata:
name, workflow, kind, features, targets, classes, metrics, params, library versions).
It is identified by the sha256 of the archive bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILE = "model.keras"
METADATA_FILE = "skipper.json"
MEMBERS = frozenset({MODEL_FILE, METADATA_FILE})
MEDIA_TYPE = "application/gzip"
# Large artifacts move over the bus in pieces of `bus.artifact_chunk_bytes`, never as one message.
READ_CHUNK = 1024 * 1024


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in chunks: never the whole file in memory."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()

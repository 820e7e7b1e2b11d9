"""The artifact format shared by the trainer (writes), registry (stores) and server (installs).

An artifact is one gzip'd tar archive holding exactly two regular files:
`model.keras` (the Keras 3 model, normalisation baked in) and `skipper.json` (metadata:
name, workflow, kind, features, targets, classes, metrics, params, library versions).
It is identified by the sha256 of the archive bytes.
"""

from __future__ import annotations

import hashlib

MODEL_FILE = "model.keras"
METADATA_FILE = "skipper.json"
MEMBERS = frozenset({MODEL_FILE, METADATA_FILE})
MEDIA_TYPE = "application/gzip"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

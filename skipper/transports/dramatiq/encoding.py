"""Bytes-aware Dramatiq encoding: byte strings travel raw after the encoded message, never base64.

Dramatiq encodes whole messages with one process-wide encoder (JSON by default), which cannot
carry bytes. `SkipperEncoder` wraps the current encoder: a message without bytes is encoded
exactly as before; one with bytes gets a small binary frame (`\\x00SKB1`, the inner encoding's
length and the blob count as two big-endian uint32, the inner encoding with `{"__skipper_blob__":
i}` placeholders, then each blob as a big-endian uint64 length and its raw bytes).
`install_encoder()` installs it; every `DramatiqTransport` calls it.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import dramatiq
from dramatiq.encoder import Encoder, JSONEncoder

_BLOB_KEY = "__skipper_blob__"
_BLOB_MAGIC = b"\x00SKB1"  # neither JSON nor pickle output starts with a NUL byte


class SkipperEncoder(Encoder):
    """Wraps a Dramatiq encoder so that byte strings travel raw, after the encoded message."""

    def __init__(self, inner: Encoder | None = None) -> None:
        self.inner = inner or JSONEncoder()

    def encode(self, data: dict[str, Any]) -> bytes:
        blobs: list[bytes] = []
        head = self.inner.encode(_stash(data, blobs))
        if not blobs:
            return head
        parts = [_BLOB_MAGIC, struct.pack(">II", len(head), len(blobs)), head]
        for blob in blobs:
            parts += [struct.pack(">Q", len(blob)), blob]
        return b"".join(parts)

    def decode(self, data: bytes) -> dict[str, Any]:
        if not data.startswith(_BLOB_MAGIC):
            return self.inner.decode(data)
        view = memoryview(data)
        pos = len(_BLOB_MAGIC)
        head_len, count = struct.unpack_from(">II", view, pos)
        pos += 8
        head = self.inner.decode(bytes(view[pos : pos + head_len]))
        pos += head_len
        blobs: list[bytes] = []
        for _ in range(count):
            (size,) = struct.unpack_from(">Q", view, pos)
            pos += 8
            blobs.append(_Blob(view[pos : pos + size]))
            pos += size
        restored: dict[str, Any] = _restore(head, blobs)
        return restored


class _Blob(bytes):
    """Decoded raw bytes whose repr stays short: Dramatiq logs a failed message with its arguments."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


def _stash(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {_BLOB_KEY: len(blobs) - 1}
    if isinstance(value, dict):
        return {k: _stash(v, blobs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stash(v, blobs) for v in value]
    return value


def _restore(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_BLOB_KEY), int):
            return blobs[value[_BLOB_KEY]]
        return {k: _restore(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, blobs) for v in value]
    return value


_encoder_lock = threading.Lock()


def install_encoder() -> None:
    """Make Dramatiq's process-wide encoder bytes-aware (idempotent; wraps the current one)."""
    with _encoder_lock:
        current = dramatiq.get_encoder()
        if not isinstance(current, SkipperEncoder):
            dramatiq.set_encoder(SkipperEncoder(current))



"""The api's artifact store taking a large artifact in chunks and giving it out in ranges."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from skipper.core.errors import ArtifactRejected
from skipper.modules.api.artifacts import ArtifactStore

UPLOAD = "0123456789abcdef0123456789abcdef"


def chunks(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(offset, data[offset:offset + size]) for offset in range(0, len(data), size)]


def test_chunks_in_any_order_commit_to_the_artifact_and_read_back_in_ranges(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    # Two api replicas sharing the store may each write some chunks, in any order
    for offset, piece in reversed(chunks(data, 1024)):
        store.write_chunk("diabetes", UPLOAD, offset, piece, max_bytes=1 << 20)
    path = store.commit("diabetes", UPLOAD, sha, len(data))
    assert path.name == f"{sha}.tar.gz" and path.read_bytes() == data
    assert not list(tmp_path.rglob(".upload-*"))
    assert b"".join(store.read_range(str(path), o, 1024)[0] for o in range(0, len(data), 1024)) == data
    assert store.read_range(str(path), 9_990, 1024) == (data[9_990:], len(data))
    # A redelivered commit finds it in place
    assert store.commit("diabetes", UPLOAD, sha, len(data)) == path


def test_an_upload_that_does_not_match_its_checksum_or_size_is_refused_and_removed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = os.urandom(3000)
    for offset, piece in chunks(data, 1024)[:-1]:  # the last chunk never arrived
        store.write_chunk("diabetes", UPLOAD, offset, piece, max_bytes=1 << 20)
    with pytest.raises(ArtifactRejected, match="does not match"):
        store.commit("diabetes", UPLOAD, hashlib.sha256(data).hexdigest(), len(data))
    assert not list(tmp_path.rglob(".upload-*")) and not list(tmp_path.rglob("*.tar.gz"))
    with pytest.raises(ArtifactRejected, match="no chunks"):
        store.commit("diabetes", UPLOAD, hashlib.sha256(data).hexdigest(), len(data))


def test_chunks_past_the_size_limit_or_with_a_crafted_upload_id_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(ArtifactRejected, match="limit"):
        store.write_chunk("diabetes", UPLOAD, 4096, b"x" * 1024, max_bytes=4096)
    with pytest.raises(ArtifactRejected, match="not a hex id"):
        store.write_chunk("diabetes", "../../etc/passwd", 0, b"x", max_bytes=4096)
    with pytest.raises(ArtifactRejected, match="outside"):
        store.write_chunk("../outside", UPLOAD, 0, b"x", max_bytes=4096)
    assert not (tmp_path / "outside").exists()


def test_a_commit_sweeps_away_uploads_abandoned_by_dead_trainers_but_not_those_in_progress(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    # Given an upload whose trainer died an hour and a half ago, and one whose chunks are still arriving
    store.write_chunk("diabetes", "a" * 32, 0, b"x" * 1024, max_bytes=1 << 20)
    abandoned = tmp_path / "diabetes" / f".upload-{'a' * 32}.part"
    os.utime(abandoned, (abandoned.stat().st_atime - 5400, abandoned.stat().st_mtime - 5400))
    store.write_chunk("diabetes", "b" * 32, 0, b"y" * 1024, max_bytes=1 << 20)
    # When another upload of the model commits
    data = os.urandom(2048)
    for offset, piece in chunks(data, 1024):
        store.write_chunk("diabetes", UPLOAD, offset, piece, max_bytes=1 << 20)
    store.commit("diabetes", UPLOAD, hashlib.sha256(data).hexdigest(), len(data))
    # Then the abandoned part is gone, and the one in progress can still be committed
    assert not abandoned.exists()
    assert (tmp_path / "diabetes" / f".upload-{'b' * 32}.part").exists()
    store.write_chunk("diabetes", "b" * 32, 1024, b"y" * 1024, max_bytes=1 << 20)
    assert store.commit("diabetes", "b" * 32, hashlib.sha256(b"y" * 2048).hexdigest(), 2048).read_bytes() == b"y" * 2048

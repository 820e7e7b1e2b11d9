"""API keys: making them, hashing them, and the keys file that lists them.

A key is `sk_` + 32 random bytes, URL-safe base64. Skipper stores only its SHA-256, so a
leaked configuration or keys file does not leak a usable key. The keys file is a YAML (or
JSON, which YAML reads too) list of `{name, sha256, scopes}`, the same shape as `auth.keys`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from skipper.core.errors import ConfigError

PREFIX = "sk_"
SCOPES = ("read", "predict", "train", "deploy", "admin")
KEY_BYTES = 32


def hash_key(key: str) -> str:
    """The hex SHA-256 under which a key is configured."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(name: str, scopes: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """A fresh key and its entry for `auth.keys` or a keys file: `{"name", "sha256", "scopes"}`."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ConfigError(f"scopes must be a non-empty list of {', '.join(SCOPES)}; got {list(scopes)}")
    key = PREFIX + secrets.token_urlsafe(KEY_BYTES)
    return key, {"name": name, "sha256": hash_key(key), "scopes": list(dict.fromkeys(scopes))}


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a keys file; an empty or missing-content file is an empty list."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"auth.keys_file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"auth.keys_file {path} cannot be read: {exc}") from None
    if data is None:
        return []
    if isinstance(data, dict) and "keys" in data:  # also accept the `auth:`-like shape {keys: [...]}
        data = data["keys"]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ConfigError(f"auth.keys_file {path} must hold a list of {{name, sha256, scopes}}")
    return data


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Add `entry` to the keys file at `path` (created if missing); a name already there is an error."""
    entries = read_entries(path) if path.exists() else []
    if any(e.get("name") == entry["name"] for e in entries):
        raise ConfigError(f"{path} already has a key named {entry['name']!r}; remove it first to rotate")
    entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(entries, sort_keys=False), encoding="utf-8")
    tmp.replace(path)

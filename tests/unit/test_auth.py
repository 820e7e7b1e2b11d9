"""API keys: making them, the keys file, the `keys new` command, and when a process may start without keys."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skipper.app.runtime import Runtime
from skipper.core.apikeys import append_entry, hash_key, new_key
from skipper.core.auth import build_guard, configured_keys
from skipper.core.errors import ConfigError
from skipper.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def run_skipper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skipper", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_a_new_key_is_random_prefixed_and_only_its_sha256_is_kept() -> None:
    key, entry = new_key("ci", ["train", "read", "train"])
    other, _ = new_key("ci", ["train"])
    assert key.startswith("sk_") and len(key) >= 3 + 43 and key != other  # 32 random bytes, URL-safe base64
    assert set(key[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert entry == {"name": "ci", "sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": ["train", "read"]}
    assert key not in str(entry)
    with pytest.raises(ConfigError, match="scopes"):
        new_key("ci", ["write"])
    with pytest.raises(ConfigError, match="scopes"):
        new_key("ci", [])


def test_a_keys_file_collects_entries_and_settings_read_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "keys.yaml"
    key_a, a = new_key("alice", ["read"])
    _, b = new_key("bob", ["admin"])
    append_entry(path, a)
    append_entry(path, b)
    with pytest.raises(ConfigError, match="already has a key named 'alice'"):
        append_entry(path, new_key("alice", ["train"])[1])
    inline = new_key("carol", ["predict"])[1]
    settings = load_settings(environ={"SKIPPER_AUTH__KEYS_FILE": str(path)}, overrides={"auth": {"keys": [inline]}})
    keys = configured_keys(settings)
    assert [(k.name, k.scopes) for k in keys] == [("carol", ["predict"]), ("alice", ["read"]), ("bob", ["admin"])]
    assert keys[1].sha256 == hash_key(key_a)
    # JSON is YAML too; an {keys: [...]} mapping is accepted as well
    json_file = tmp_path / "keys.json"
    json_file.write_text('{"keys": [{"name": "dave", "sha256": "%s", "scopes": ["deploy"]}]}' % ("0" * 64))
    from_json = load_settings(environ={}, overrides={"auth": {"keys_file": str(json_file)}})
    assert [k.name for k in configured_keys(from_json)] == ["dave"]


A64, B64 = "a" * 64, "b" * 64


@pytest.mark.parametrize(("content", "message"), [
    ("- {name: x, sha256: nothex, scopes: [read]}", "entry 0"),
    (f"- {{name: x, sha256: '{A64}', scopes: [write]}}", "entry 0"),
    ("just a string", "must hold a list"),
    (f"- {{name: x, sha256: '{A64}', scopes: [read]}}\n- {{name: x, sha256: '{B64}', scopes: [read]}}", "unique"),
])
def test_a_bad_keys_file_is_a_config_error_naming_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        configured_keys(load_settings(environ={}, overrides={"auth": {"keys_file": str(path)}}))
    with pytest.raises(ConfigError, match="does not exist"):
        configured_keys(load_settings(environ={}, overrides={"auth": {"keys_file": str(tmp_path / "none.yaml")}}))


def test_keys_new_prints_the_key_once_and_appends_its_entry(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    result = run_skipper("keys", "new", "--name", "ci-bot", "--scopes", "train,read", "--file", str(path))
    assert result.returncode == 0, result.stderr
    key = next(line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("key: "))
    entries = yaml.safe_load(path.read_text())
    assert entries == [{"name": "ci-bot", "sha256": hash_key(key), "scopes": ["train", "read"]}]
    assert key not in path.read_text()
    printed = run_skipper("keys", "new", "--name", "ops", "--scopes", "admin")
    assert printed.returncode == 0
    entry = yaml.safe_load(printed.stdout.split("auth.keys_file names:\n", 1)[1])
    assert entry[0]["name"] == "ops" and entry[0]["scopes"] == ["admin"] and len(entry[0]["sha256"]) == 64
    bad = run_skipper("keys", "new", "--name", "x", "--scopes", "root")
    assert bad.returncode == 2 and "scopes" in bad.stderr
    bad_name = run_skipper("keys", "new", "--name", "has space", "--scopes", "read")
    assert bad_name.returncode == 2 and "name" in bad_name.stderr


def test_without_keys_a_loopback_bind_is_open_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.8.9.10"):
        with caplog.at_level(logging.WARNING, logger="skipper.auth"):
            caplog.clear()
            guard = build_guard(load_settings(environ={}, overrides={"host": host}), protected_routes=True)
        assert not guard.enforce
        assert [r.getMessage() for r in caplog.records if "no API keys" in r.getMessage()], host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "skipper.example.com"])
def test_without_keys_any_other_bind_refuses_to_start_saying_how_to_fix_it(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build_guard(load_settings(environ={}, overrides={"host": host}), protected_routes=True)
    assert "keys new" in refused.value.message and "SKIPPER_AUTH__MODE=open" in refused.value.message
    # explicitly open, or with a key, it starts
    assert not build_guard(load_settings(environ={}, overrides={"host": host, "auth": {"mode": "open"}}),
                           protected_routes=True).enforce
    keyed = {"host": host, "auth": {"keys": [new_key("k", ["read"])[1]]}}
    assert build_guard(load_settings(environ={}, overrides=keyed), protected_routes=True).enforce


def test_auth_mode_keys_requires_keys_even_on_loopback() -> None:
    with pytest.raises(ConfigError, match="no API key is configured"):
        build_guard(load_settings(environ={}, overrides={"auth": {"mode": "keys"}}), protected_routes=True)


def test_a_process_serving_only_open_routes_needs_no_keys_anywhere(tmp_path: Path) -> None:
    # A trainer's or a server's HTTP side is health, ready and metrics: nothing to protect.
    settings = load_settings(environ={}, overrides={"host": "0.0.0.0", "data_dir": str(tmp_path)})
    Runtime(settings, frozenset({"trainer"})).app()
    with pytest.raises(ConfigError):
        Runtime(settings, frozenset({"api"})).app()
    protected = load_settings(environ={}, overrides={"host": "0.0.0.0", "data_dir": str(tmp_path),
                                                     "auth": {"protect_metrics": True}})
    with pytest.raises(ConfigError):  # ... unless its metrics are protected
        Runtime(protected, frozenset({"trainer"})).app()


def test_the_cli_exits_2_at_start_when_it_would_expose_the_api_without_keys(tmp_path: Path) -> None:
    env = {"SKIPPER_DATA_DIR": str(tmp_path)}
    refused = run_skipper("--role=api", "--host", "0.0.0.0", "--port", "0", env=env)
    assert refused.returncode == 2
    assert "refusing to serve the API on 0.0.0.0 without API keys" in refused.stderr and "keys new" in refused.stderr
    missing = run_skipper("--role=api", env={**env, "SKIPPER_AUTH__KEYS_FILE": str(tmp_path / "nope.yaml")})
    assert missing.returncode == 2 and "nope.yaml does not exist" in missing.stderr

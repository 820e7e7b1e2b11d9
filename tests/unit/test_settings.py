"""Settings precedence (defaults < file < environment < overrides) and start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from skipper.core.errors import ConfigError
from skipper.core.roles import parse_roles
from skipper.core.settings import load_settings


def test_defaults_give_the_embedded_memory_transport_and_sqlite_under_the_data_dir() -> None:
    settings = load_settings(environ={})
    assert settings.transport == "memory"
    assert settings.namespace == "skipper"
    assert settings.port == 8000 and settings.host == "127.0.0.1"
    assert settings.resolved_database_url == "sqlite:///skipper-data/skipper.db"
    assert {"diabetes", "wine"} <= set(settings.workflows)
    assert settings.workflows["diabetes"].model == "diabetes"


def test_a_config_file_overrides_defaults_and_the_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "override.yaml"
    config.write_text("transport: rabbitmq\nport: 9000\nserving: {max_batch_size: 64}\n")
    settings = load_settings(config, environ={"SKIPPER_PORT": "9100", "SKIPPER_SERVING__MAX_WAIT_MS": "5"})
    assert settings.transport == "rabbitmq"  # file
    assert settings.port == 9100  # environment beats file
    assert settings.serving.max_batch_size == 64  # file, nested merge keeps the other keys
    assert settings.serving.max_wait_ms == 5.0  # environment, nested
    assert settings.serving.max_artifact_bytes > 0  # default survives the nested override


def test_environment_values_keep_urls_intact_and_parse_lists() -> None:
    settings = load_settings(environ={
        "SKIPPER_BROKER_URL": "amqp://u:p@rabbit:5672/%2F",
        "SKIPPER_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "SKIPPER_WORKFLOWS__DIABETES__PARAMS__HIDDEN_UNITS": "[16, 8]",
        "SKIPPER_NAMESPACE": "team-a",
    })
    assert settings.broker_url == "amqp://u:p@rabbit:5672/%2F"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert settings.workflows["diabetes"].params.hidden_units == [16, 8]
    assert settings.namespace == "team-a"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SKIPPER_TRANSPORT": "carrier-pigeon"}, "transport"),
        ({"SKIPPER_PORT": "eighty"}, "port"),
        ({"SKIPPER_TYPO": "1"}, "typo"),
        ({"SKIPPER_SERVING__MAX_BATCH_SIZE": "0"}, "serving.max_batch_size"),
        ({"SKIPPER_NAMESPACE": "has spaces"}, "namespace"),
    ],
)
def test_an_unknown_key_or_bad_value_fails_naming_it(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert named in info.value.message


def test_a_missing_or_malformed_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})


def test_roles_parse_all_single_and_combinations() -> None:
    assert parse_roles("all") == {"api", "trainer", "server"}
    assert parse_roles("server") == {"server"}
    assert parse_roles("api, trainer") == {"api", "trainer"}
    with pytest.raises(ConfigError, match="unknown role 'painter'"):
        parse_roles("api,painter")

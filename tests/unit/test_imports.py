"""The one import-path resolver: `package.module:name` or a `ConfigError` that names the path and what it was for."""

from __future__ import annotations

import pytest

from skipper.core.errors import ConfigError
from skipper.core.imports import resolve
from skipper.core.settings import load_settings


def test_a_path_resolves_to_the_named_object_including_a_dotted_attribute() -> None:
    assert resolve("skipper.core.settings:load_settings") is load_settings
    assert resolve("skipper.core.errors:ConfigError.to_payload") is ConfigError.to_payload


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("skipper.core.settings.load_settings", "must look like 'package.module:name'"),
        ("skipper.core.nonexistent:thing", "cannot import trainer module 'skipper.core.nonexistent'"),
        ("skipper.core.settings:no_such_thing", "not found: skipper.core.settings has no 'no_such_thing'"),
        ("skipper.core.settings:NAME_PATTERN", "is not callable"),
    ],
)
def test_a_bad_path_is_a_config_error_naming_it(path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(path, what="trainer")
    assert message in info.value.message
    assert info.value.details == {"trainer": path}

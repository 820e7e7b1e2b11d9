"""The transport registry: names and aliases resolve lazily; an unknown name gets a suggestion."""

from __future__ import annotations

import pytest

from skipper.core.bus import BusOptions
from skipper.core.errors import ConfigError
from skipper.core.settings import load_settings
from skipper.transports import ALIASES, TRANSPORTS, build_transport, resolve_transport
from skipper.transports.dramatiq import DramatiqTransport
from skipper.transports.memory import MemoryTransport
from skipper.transports.rabbitmq import RabbitMQTransport


@pytest.mark.parametrize(
    ("name", "cls"),
    [("memory", MemoryTransport), ("rabbitmq", RabbitMQTransport), ("dramatiq", DramatiqTransport),
     ("amqp", RabbitMQTransport), ("RabbitMQ", RabbitMQTransport), ("inmemory", MemoryTransport)],
)
def test_a_name_or_an_alias_resolves_to_its_transport_class(name: str, cls: type) -> None:
    assert resolve_transport(name) is cls


def test_every_alias_points_at_a_registered_name() -> None:
    assert set(ALIASES.values()) <= set(TRANSPORTS)


@pytest.mark.parametrize(("typo", "suggestion"), [("rabitmq", "rabbitmq"), ("dramatic", "dramatiq"), ("memroy", "memory")])
def test_an_unknown_name_is_a_config_error_that_suggests_the_closest_one(typo: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_transport(typo)
    assert f"did you mean {suggestion!r}?" in str(info.value)
    assert info.value.details["choices"] == sorted(TRANSPORTS)


def test_a_name_like_nothing_registered_lists_the_choices_without_a_guess() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_transport("carrier-pigeon")
    assert "did you mean" not in str(info.value)
    assert "memory, rabbitmq, dramatiq" in str(info.value)


@pytest.mark.parametrize(("name", "cls"), [("memory", MemoryTransport), ("rabbitmq", RabbitMQTransport)])
def test_build_transport_constructs_the_configured_transport_without_io(name: str, cls: type) -> None:
    settings = load_settings(environ={"SKIPPER_TRANSPORT": name, "SKIPPER_NAMESPACE": "reg-test",
                                      "SKIPPER_BUS__MAX_RETRIES": "5"})
    transport = build_transport(settings, BusOptions.from_settings(settings, "trainer"))
    assert isinstance(transport, cls)
    assert (transport.options.namespace, transport.options.role, transport.options.max_retries) == ("reg-test", "trainer", 5)
    assert not transport.started

"""The one settings object a transport reads: the `bus` section plus the deployment's identity."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from skipper.core.settings import BusSettings, Settings


class BusOptions(BusSettings):
    """Every knob of the bus, in one frozen object: `Settings.bus`, the namespace and the role.

    The fields of `BusSettings` are declared once (in `skipper.core.settings`, where the config
    file is validated); this adds what a transport needs beside them. Build it with
    `BusOptions.from_settings(settings, role)`; tests pass keyword overrides.
    """

    namespace: str = Field("skipper", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    role: str = "all"  # the process's roles; transports put it in their connection names

    @classmethod
    def from_settings(cls, settings: Settings, role: str = "all", **overrides: Any) -> BusOptions:
        """The bus options of a process with `role`, from the one settings object."""
        values = {**settings.bus.model_dump(), "namespace": settings.namespace, "role": role, **overrides}
        return cls.model_validate(values)

    def client_name(self, suffix: str = "") -> str:
        """How this process names its broker connections: `skipper:<namespace>:<role>[:suffix]`.

        Operators (and the fault tests) find one deployment's connections, or one role's, by it.
        """
        return ":".join(p for p in ("skipper", self.namespace, self.role, suffix) if p)

    def backoff(self, attempt: int) -> float:
        """Seconds before retrying a work message whose attempt `attempt` (0-based) failed."""
        return float(min(self.retry_backoff_s * (2**attempt), self.retry_backoff_max_s))

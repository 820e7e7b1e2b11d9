"""One settings object: `config/skipper.yaml` < `--config FILE` < `SKIPPER_*` environment.

Environment keys map to fields: `SKIPPER_TRANSPORT` -> `transport`, and a double underscore
reaches into a section: `SKIPPER_SERVING__MAX_BATCH_SIZE` -> `serving.max_batch_size`.
Values are parsed as YAML scalars (`8`, `true`, `[64, 32]`). An unknown key or a bad value
fails at start with a `ConfigError` naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from skipper.core.errors import ConfigError


def _defaults_file() -> Traversable:
    """`config/skipper.yaml`: package data in an installed wheel, else the source checkout's file.

    The wheel ships the repository's `config/` as `skipper/config/` (see setup.py). An editable
    install or a plain checkout has no such directory inside the package and reads `config/` beside it.
    """
    packaged = resources.files("skipper").joinpath("config", "skipper.yaml")
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "config" / "skipper.yaml"


DEFAULTS_FILE = _defaults_file()
ENV_PREFIX = "SKIPPER_"
# Read by the CLI or by tools around Skipper, not settings fields.
_ENV_NOT_SETTINGS = {"SKIPPER_CONFIG", "SKIPPER_ROLE", "SKIPPER_URL", "SKIPPER_API_KEY"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusSettings(_Section):
    prefetch: int = Field(16, ge=1, le=4096)
    max_retries: int = Field(3, ge=0, le=100)
    retry_backoff_s: float = Field(0.5, ge=0)
    retry_backoff_max_s: float = Field(30.0, ge=0)
    request_timeout_s: float = Field(10.0, gt=0)
    reconnect_backoff_max_s: float = Field(10.0, gt=0)
    inline_artifact_max_bytes: int = Field(4 * 1024 * 1024, ge=0)
    # Larger artifacts travel in chunks of this size (trainer -> registry, registry -> servers).
    artifact_chunk_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    heartbeat_s: int = Field(30, ge=0)
    worker_threads: int = Field(4, ge=1, le=256)
    time_limit_s: float = Field(3600.0, gt=0)
    max_age_s: float = Field(86400.0, gt=0)
    # HMAC key for model announcements; servers then refuse unsigned ones (skipper.core.signing).
    signing_key: SecretStr | None = Field(None, min_length=16)


class HttpSettings(_Section):
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    predict_timeout_s: float = Field(5.0, gt=0)
    max_instances: int = Field(1024, ge=1)
    # Broker transports: bus requests in flight per model (requests queued meanwhile are merged);
    # 0: one per serving replica of the model, as the api hears them announce (skipper.modules.api.coalesce).
    predict_pipeline: int = Field(0, ge=0, le=256)
    page_size_max: int = Field(200, ge=1)
    max_json_depth: int = Field(32, ge=2, le=512)  # deeper request bodies are 400
    # Host header allow-list; empty: loopback names when bound to loopback, any host otherwise.
    allowed_hosts: list[str] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)  # CORS stays off unless origins are listed
    sse_heartbeat_s: float = Field(15.0, gt=0, le=3600)  # a comment line this often keeps proxies from closing streams


class TrainingSettings(_Section):
    tf_intra_op_threads: int = Field(0, ge=0)
    tf_inter_op_threads: int = Field(0, ge=0)
    concurrency: int = Field(1, ge=1, le=64)


class ServingSettings(_Section):
    max_batch_size: int = Field(256, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)
    max_artifact_bytes: int = Field(512 * 1024 * 1024, ge=1)
    max_member_bytes: int = Field(512 * 1024 * 1024, ge=1)
    jit_compile: bool = False  # True: XLA for the batch sizes where it is faster, compiled in the background
    # TensorFlow's pools for the whole process, 0: its default (one thread per core); see serving/tfpools.py.
    tf_inter_op_threads: int = Field(1, ge=0)
    tf_intra_op_threads: int = Field(0, ge=0)
    catch_up_timeout_s: float = Field(30.0, gt=0)
    max_queued_rows: int = Field(8192, ge=1)  # per model; past it predictions are shed with 503 + Retry-After
    resync_s: float = Field(30.0, gt=0)  # how often a server re-checks the registry's production versions
    announce_s: float = Field(5.0, gt=0)  # how often a server announces itself; silent for 3 periods: gone
    # The memory guard (see the serving module's memory.py): models held plus the one loading
    # must fit the budget; unset, it is the memory limit (given, else the cgroup's) minus headroom.
    memory_budget_mb: float | None = Field(None, gt=0)
    memory_limit_mb: float | None = Field(None, gt=0)
    memory_headroom_mb: float = Field(768.0, ge=0)


class ApiKey(_Section):
    """One API key as configured: its name, the SHA-256 of the key (never the key), its scopes."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["read", "predict", "train", "deploy", "admin"]] = Field(min_length=1)


class AuthSettings(_Section):
    # auto: keys when any are configured, else open on a loopback bind and a refusal to start elsewhere;
    # keys: always require keys; open: never check keys (an explicit opt-out).
    mode: Literal["auto", "keys", "open"] = "auto"
    keys: list[ApiKey] = Field(default_factory=list)
    keys_file: Path | None = None  # same list in its own YAML/JSON file (a mounted Secret)
    protect_metrics: bool = False  # /metrics then needs the `read` scope
    # Signs the dashboard's session cookies and CSRF tokens; unset: a random one per process (every api
    # replica needs the same secret for a session to work across them, and a restart logs everyone out).
    session_secret: SecretStr | None = Field(None, min_length=16)
    session_max_age_s: int = Field(12 * 3600, ge=60)


class Limits(_Section):
    """Resource limits on training; a workflow may override any of them."""

    max_epochs: int = Field(1000, ge=1)
    max_parameters: int = Field(5_000_000, ge=1)
    max_train_seconds: float = Field(1800.0, gt=0)
    max_queued_tasks: int = Field(100, ge=1)


class WorkflowLimits(_Section):
    max_epochs: int | None = Field(None, ge=1)
    max_parameters: int | None = Field(None, ge=1)
    max_train_seconds: float | None = Field(None, gt=0)


class EarlyStopping(_Section):
    patience: int = Field(5, ge=1)
    monitor: str = Field("val_loss", pattern=r"^[a-z_]{1,32}$")
    min_delta: float = Field(0.0, ge=0)


class TrainParams(_Section):
    """Hyper-parameters; a train request's `params` override a workflow's defaults."""

    epochs: int = Field(50, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    learning_rate: float = Field(0.001, gt=0, le=10)
    hidden_units: list[int] = Field(default_factory=lambda: [64, 32], max_length=32)
    dropout: float = Field(0.0, ge=0, lt=1)
    test_size: float = Field(0.2, gt=0, lt=1)
    validation_split: float = Field(0.1, ge=0, lt=1)
    early_stopping: EarlyStopping | None = None
    seed: int = 42

    @field_validator("hidden_units")
    @classmethod
    def _positive_units(cls, units: list[int]) -> list[int]:
        if not units or any(u < 1 or u > 65536 for u in units):
            raise ValueError("hidden_units must be a non-empty list of integers between 1 and 65536")
        return units


class DatasetSpec(_Section):
    source: Literal["sklearn", "csv"]
    name: str | None = None  # sklearn: diabetes, wine, breast_cancer, digits, iris, ...
    path: str | None = None  # csv: a file path (relative to the data dir or absolute)
    features: list[str] | None = None  # default: every column but the targets
    targets: list[str] | None = None  # default for sklearn sets: ["target"]


NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"  # workflow and model names: they appear in URLs and paths


class CompatSettings(_Section):
    """The original Skipper's REST contract (`tasks/execute_async`, `tasks/execute_sync`)."""

    default_workflow: str = Field("diabetes", pattern=NAME_PATTERN)  # what its routes without a workflow use


class Workflow(_Section):
    description: str = ""
    model: str = Field(pattern=NAME_PATTERN)
    kind: Literal["regression", "classification"]
    dataset: DatasetSpec
    params: TrainParams = Field(default_factory=TrainParams)
    # `package.module:name` of a trainer function and a predictor class; unset, the training and
    # serving modules use their built-in Keras ones (core names no module).
    trainer: str | None = None
    predictor: str | None = None
    limits: WorkflowLimits = Field(default_factory=WorkflowLimits)


class LogSettings(_Section):
    # auto: one readable line per record on a terminal, JSON lines otherwise; json or text: always that.
    format: Literal["auto", "json", "text"] = "auto"


class Settings(_Section):
    transport: Literal["memory", "rabbitmq", "dramatiq"] = "memory"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    namespace: str = Field("skipper", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    database_url: str | None = None
    data_dir: Path = Path("./skipper-data")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True  # false: text whatever log.format says (kept for older configs)
    log: LogSettings = Field(default_factory=LogSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: Limits = Field(default_factory=Limits)
    compat: CompatSettings = Field(default_factory=CompatSettings)
    workflows: dict[str, Workflow] = Field(default_factory=dict)

    @field_validator("workflows")
    @classmethod
    def _workflow_names(cls, workflows: dict[str, Workflow]) -> dict[str, Workflow]:
        bad = [name for name in workflows if not re.match(NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"workflow name {bad[0]!r} must match {NAME_PATTERN}")
        return workflows

    def limits_for(self, workflow: Workflow) -> Limits:
        """The global limits with the workflow's overrides applied."""
        return self.limits.model_copy(update=workflow.limits.model_dump(exclude_none=True))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'skipper.db').as_posix()}"

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults_file: Traversable = DEFAULTS_FILE,
) -> Settings:
    """Merge defaults, an optional config file, the environment and explicit overrides."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    for layer in (_read_yaml(defaults_file), _read_yaml(Path(config_file)) if config_file else {}):
        _deep_merge(merged, layer)
    _deep_merge(merged, _env_layer(env))
    if overrides:
        _deep_merge(merged, dict(overrides))
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}", details={"errors": exc.errors(include_url=False)}) from None


def _read_yaml(path: Traversable) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key in _ENV_NOT_SETTINGS:
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
        value = _parse_env_value(raw)
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _parse_env_value(raw: str) -> Any:
    """Numbers, booleans and lists as YAML reads them; anything else exactly as given."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (bool, int, float, list)) else raw


def _deep_merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value

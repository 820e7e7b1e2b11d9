"""Fault scenarios on real processes and real brokers, shared by the fault tests and `benchmarks/faults.py`.

A scenario runs one fault against a `Deployment` (api, trainer, servers as processes) under
prediction load with training submissions spread over it, and returns an `Outcome`: time to
recover, predictions failed and how, tasks accepted vs succeeded. The tests assert on it; the
benchmark prints it as a table.

Faults that take a whole broker down (close every connection, stop the app, restart Redis) run
against a private broker this module starts on free ports (`PrivateRabbitMQ`, `PrivateRedis`),
never against the shared ones other tests use. PostgreSQL faults terminate only the sessions
whose `application_name` is the deployment's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any, cast

import redis
from sqlalchemy import create_engine, text

from tests.processes import ROW, Cluster, Role, eventually, free_port, http, postgres_schema
from tests.services import POSTGRES_URL

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
_CONNECTION_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')
# Quick trainings spread over a scenario; long ones where a fault must land mid-training.
QUICK_TRAINING = {"epochs": 2, "batch_size": 32, "early_stopping": None}
LONG_TRAINING = {"epochs": 150, "batch_size": 8, "early_stopping": None}
FINISHED = ("succeeded", "failed", "cancelled")


def rabbitmq_available() -> bool:
    return (RABBITMQ_BIN / "rabbitmq-server").exists() and os.geteuid() == 0


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


# --- private brokers ------------------------------------------------------------------------


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (own name, ports, data dir and Erlang cookie), for whole-broker faults."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "rabbitmq"
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"skipper-faults-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self._env = {
            **os.environ,
            "HOME": str(self.dir),  # its own .erlang.cookie, shared by the node and our rabbitmqctl calls
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }

    def start(self) -> PrivateRabbitMQ:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "consumer_timeout = 7200000\n"  # above bus.time_limit_s: a long training is not redelivered
        )
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management listener to collide with
        subprocess.run([str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"], env=self._env, check=True,
                       capture_output=True, timeout=60)
        self._wait_up()
        return self

    def ctl(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self._env,
                              capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr or proc.stdout}")
        return proc.stdout

    def _wait_up(self) -> None:
        eventually(lambda: _port_open(self.port), timeout=120, interval=0.2, what=f"private RabbitMQ on {self.port}")

    # faults
    def close_all(self) -> None:
        self.ctl("close_all_connections", "skipper fault suite: the broker closes every connection")

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self._wait_up()

    # what the broker sees
    def connections(self, prefix: str) -> list[str]:
        listing = self.ctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
        found = []
        for line in listing.splitlines():
            match = _CONNECTION_NAME.search(line)
            if match and match.group(1).startswith(prefix):
                found.append(line.split("\t", 1)[0])
        return found

    def drop(self, prefix: str) -> int:
        pids = self.connections(prefix)
        for pid in pids:
            self.ctl("close_connection", pid, "skipper fault suite: broker-side close", check=False)
        return len(pids)

    def queue_counts(self, queue: str) -> tuple[int, int] | None:
        listing = self.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "-q", "--no-table-headers")
        for line in listing.splitlines():
            name, ready, unacked = line.split("\t")
            if name == queue:
                return int(ready), int(unacked)
        return None

    def stop(self) -> None:
        self.ctl("stop", check=False)
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int((self.dir / "pid").read_text().strip()), signal.SIGKILL)


class PrivateRedis:
    """A redis-server of its own, with an append-only file so a restart keeps what it held (as deployed)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "redis"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually(lambda: _port_open(self.port), timeout=30, interval=0.1, what=f"private Redis on {self.port}")
        return self

    def restart(self) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), then start it again on the same port."""
        self.stop()
        self.start()

    def connections(self, prefix: str) -> list[int]:
        client = redis.Redis.from_url(self.url)
        try:
            return [int(c["id"]) for c in _client_list(client) if str(c.get("name", "")).startswith(prefix)]
        finally:
            client.close()

    def drop(self, prefix: str) -> int:
        client = redis.Redis.from_url(self.url)
        try:
            ids = [int(c["id"]) for c in _client_list(client) if str(c.get("name", "")).startswith(prefix)]
            for client_id in ids:
                client.client_kill_filter(_id=str(client_id))
            return len(ids)
        finally:
            client.close()

    def queue_counts(self, queue: str) -> tuple[int, int] | None:
        return None  # Dramatiq's Redis layout has no per-queue unacked count worth asserting on

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(30)
        self._proc = None


Broker = PrivateRabbitMQ | PrivateRedis


def _client_list(client: redis.Redis) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], client.client_list())  # the sync client's answer is a list


def _port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# --- PostgreSQL ------------------------------------------------------------------------------


def terminate_postgres_sessions(application_name: str) -> int:
    """`pg_terminate_backend` every session named `application_name` (only ours); how many were ended."""
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            rows = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                                {"name": application_name}).fetchall()
        return len(rows)
    finally:
        admin.dispose()


# --- the deployment ----------------------------------------------------------------------------


@dataclass
class Deployment:
    """api, trainer and servers as processes over one broker and one PostgreSQL schema."""

    transport: str
    broker: Broker
    cluster: Cluster
    application_name: str
    api: Role | None = None
    trainer: Role | None = None
    servers: list[Role] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.cluster.env["SKIPPER_NAMESPACE"]

    def prefix(self, role: str) -> str:
        return f"skipper:{self.namespace}:{role}:"

    def start(self, servers: int = 2) -> Deployment:
        self.api = self.cluster.start("api", "api")
        self.trainer = self.cluster.start("trainer", "trainer")
        self.servers = [self.cluster.start("server", f"server{i + 1}") for i in range(servers)]
        return self

    @property
    def the_api(self) -> Role:
        assert self.api is not None
        return self.api

    def first_model(self) -> int:
        """Train once so servers have a version to serve; the version number."""
        task = wait_task(self.the_api, submit(self.the_api, **QUICK_TRAINING))
        assert task["status"] == "succeeded", task
        version = int(task["result"]["model_version"])
        self.wait_servers(version)
        return version

    def wait_servers(self, version: int | None = None, timeout: float = 120) -> None:
        def serving() -> bool:
            held = [s.models().get("diabetes") for s in self.servers]
            return all(v is not None and (version is None or v == version) for v in held)

        eventually(serving, timeout=timeout, interval=0.25, what=f"every server serves diabetes v{version}")

    def drop(self, role: str) -> None:
        """The broker closes `role`'s connections; wait until they are back."""
        assert self.broker.drop(self.prefix(role)) > 0, f"no {role} connection to drop"
        eventually(lambda: len(self.broker.connections(self.prefix(role))) > 0, timeout=30, interval=0.3,
                   what=f"{role} reconnected")

    def restart_trainer(self, name: str) -> Role:
        self.trainer = self.cluster.start("trainer", name)
        return self.trainer

    def stop(self) -> None:
        self.cluster.stop()


@contextlib.contextmanager
def deployment(transport: str, broker: Broker, workdir: Path, *, servers: int = 2,
               extra_env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """A running deployment (api, one trainer, `servers` servers) on `broker`; stopped on exit."""
    application_name = f"skipper-faults-{uuid.uuid4().hex[:8]}"
    with postgres_schema(application_name) as database_url:
        env = {"SKIPPER_TRANSPORT": transport, "SKIPPER_BROKER_URL": broker.url, "SKIPPER_DATABASE_URL": database_url,
               "SKIPPER_NAMESPACE": f"flt-{uuid.uuid4().hex[:10]}", "SKIPPER_LOG_LEVEL": "INFO",
               # Reconnect quickly after an outage: recovery is bounded by the longest backoff step.
               "SKIPPER_BUS__RETRY_BACKOFF_S": "0.2", "SKIPPER_BUS__RECONNECT_BACKOFF_MAX_S": "2",
               "SKIPPER_BUS__HEARTBEAT_S": "3", "SKIPPER_HTTP__PREDICT_TIMEOUT_S": "3",
               "SKIPPER_SERVING__RESYNC_S": "5", **(extra_env or {})}
        workdir.mkdir(parents=True, exist_ok=True)
        dep = Deployment(transport, broker, Cluster(env=env, workdir=workdir), application_name)
        try:
            yield dep.start(servers)
        except BaseException:
            print(dep.cluster.logs())
            raise
        finally:
            dep.stop()


# --- tasks -----------------------------------------------------------------------------------


def submit(api: Role, **params: Any) -> str:
    status, body = http("POST", f"{api.url}/workflows/diabetes/train", {"params": params})
    assert status == 202, body
    return str(body["task_id"])


def task(api: Role, task_id: str) -> dict[str, Any]:
    return dict(http("GET", f"{api.url}/tasks/{task_id}")[1])


def epoch_reached(api: Role, task_id: str, epoch: int) -> Callable[[], bool]:
    return lambda: (task(api, task_id).get("progress") or {}).get("epoch", 0) >= epoch


def wait_task(api: Role, task_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        t = task(api, task_id)
        return t if t["status"] in FINISHED else None

    result: dict[str, Any] = eventually(done, timeout=timeout, interval=0.5, what=f"task {task_id} finished")
    return result


def succeeded_once(api: Role, task_ids: list[str]) -> dict[str, int]:
    """Per task: how many versions it produced (each must be 1: a run that completed twice would register twice)."""
    versions = Counter(v["task_id"] for v in http("GET", f"{api.url}/models/diabetes")[1]["versions"])
    return {t: versions[t] for t in task_ids}


def succeeded_events(api: Role, task_ids: list[str]) -> int:
    """How many of `task_ids` have their `task.succeeded` event (events are best effort: one emitted
    while the broker is down is lost, the task and its version are not)."""
    events = Counter(e["task_id"] for e in http("GET", f"{api.url}/events?kind=task.succeeded&limit=1000")[1]["events"])
    return sum(1 for t in task_ids if events[t] >= 1)


class Trainings:
    """Training submissions spread over a scenario: one every `every_s`, bounded in count."""

    def __init__(self, api: Role, *, every_s: float = 4.0, limit: int = 10, params: dict[str, Any] | None = None) -> None:
        self._api = api
        self._every = every_s
        self._limit = limit
        self._params = params or QUICK_TRAINING
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.accepted: list[str] = []
        self.refused: Counter[str] = Counter()  # status of each submission that was not accepted
        self.problems: dict[str, str] = {}  # accepted tasks that did not succeed exactly once -> status
        self.events_missing = 0  # succeeded tasks whose task.succeeded event was lost

    def start(self) -> Trainings:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.accepted) + sum(self.refused.values()) < self._limit:
            try:
                status, body = http("POST", f"{self._api.url}/workflows/diabetes/train", {"params": self._params},
                                    timeout=15)
            except OSError as exc:
                status, body = 0, repr(exc)
            if status == 202 and isinstance(body, dict):
                self.accepted.append(str(body["task_id"]))
            else:
                self.refused[str(status)] += 1
            self._stop.wait(self._every)

    def settle(self, timeout: float = 300) -> tuple[int, int, int]:
        """Wait for every accepted task to finish: (accepted, succeeded exactly once, other outcomes)."""
        succeeded = [t for t in self.accepted if wait_task(self._api, t, timeout)["status"] == "succeeded"]
        once = succeeded_once(self._api, succeeded) if succeeded else {}
        exactly = sum(1 for n in once.values() if n == 1)
        self.problems = {t: task(self._api, t)["status"] for t in self.accepted if once.get(t) != 1}
        self.events_missing = len(succeeded) - succeeded_events(self._api, succeeded) if succeeded else 0
        return len(self.accepted), exactly, len(self.accepted) - len(succeeded)


# --- prediction load ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    started: float
    took: float
    outcome: str  # HTTP status, or "error" (connection) / "hung" (no answer within the client's timeout)


class PredictLoad:
    """`clients` threads predicting one row each in a loop against 127.0.0.1, bounded in count and time.

    Every request is recorded (start, duration, outcome), so a scenario can say when predictions
    failed, how (a fast 503/504 or a hang), and when the first one succeeded after the fault.
    """

    def __init__(self, api: Role, *, clients: int = 8, max_requests: int = 400_000, max_seconds: float = 600,
                 client_timeout: float = 15) -> None:
        self._api = api
        self.clients = clients
        self._left = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._timeout = client_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.samples: list[Sample] = []
        self.details: Counter[str] = Counter()  # a short text of each kind of failure

    def start(self) -> PredictLoad:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout + 5)

    @property
    def ok(self) -> int:
        with self._lock:
            return sum(1 for s in self.samples if s.outcome == "200")

    def ok_after(self, mark: float) -> bool:
        with self._lock:
            return any(s.outcome == "200" and s.started >= mark for s in self.samples)

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self._left <= 0 or time.monotonic() > self._deadline:
                return False
            self._left -= 1
            return True

    def _run(self) -> None:
        body = json.dumps({"instances": [ROW]})
        path = "/api/v1/skipper/models/diabetes/predict"
        conn: HTTPConnection | None = None
        while self._take():
            started = time.monotonic()
            detail = ""
            try:
                conn = conn or HTTPConnection("127.0.0.1", self._api.port, timeout=self._timeout)
                conn.request("POST", path, body, {"content-type": "application/json"})
                response = conn.getresponse()
                raw = response.read()
                outcome = str(response.status)
                if response.status != 200:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        detail = json.loads(raw)["error"]["code"]
            except TimeoutError:
                outcome = "hung"
                _closed(conn)
                conn = None
            except (OSError, HTTPException) as exc:
                outcome, detail = "error", type(exc).__name__
                _closed(conn)
                conn = None
            sample = Sample(started, time.monotonic() - started, outcome)
            with self._lock:
                self.samples.append(sample)
                if outcome != "200":
                    self.details[f"{outcome} {detail}".strip()] += 1
            if outcome == "error":
                time.sleep(0.05)  # the api itself is unreachable: do not spin
        _closed(conn)


def _closed(conn: HTTPConnection | None) -> None:
    if conn is not None:
        conn.close()


# --- scenarios ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario did to live traffic and accepted work."""

    scenario: str
    transport: str
    predictions: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # outcome -> count
    failure_kinds: Counter[str] = field(default_factory=Counter)
    slowest_failure_s: float = 0.0
    recover_s: float | None = None  # from the fault's end (broker back) to the first success after the last failure
    disrupted_s: float = 0.0  # from the first failed prediction to the first success after the last failure
    failed_after_s: float | None = None  # how long after the fault's end the last failure started (None: none)
    accepted: int = 0
    succeeded: int = 0
    unfinished: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    @property
    def hung(self) -> int:
        return self.failed["hung"]

    @property
    def errors_500(self) -> int:
        return sum(n for k, n in self.failed.items() if k.startswith("5") and k not in ("503", "504"))

    def line(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "transport": self.transport, "predictions": self.predictions,
                "failed": dict(self.failed), "kinds": dict(self.failure_kinds),
                "slowest_failure_s": round(self.slowest_failure_s, 3),
                "recover_s": None if self.recover_s is None else round(self.recover_s, 2),
                "disrupted_s": round(self.disrupted_s, 2),
                "failed_after_s": None if self.failed_after_s is None else round(self.failed_after_s, 2),
                "accepted": self.accepted, "succeeded": self.succeeded, "notes": self.notes}


def measure(scenario: str, dep: Deployment, fault: Callable[[], float], *, clients: int = 8,
            warm_s: float = 2.0, after_s: float = 3.0, train_every_s: float | None = 3.0, trainings: int = 6,
            load: PredictLoad | None = None) -> Outcome:
    """Run `fault` (which returns when the fault is over: the broker is back) under load; the outcome.

    `after_s`: how long the load goes on once predictions succeed again, to catch late failures.
    """
    api = dep.the_api
    load = load or PredictLoad(api, clients=clients)
    own_load = not load._threads
    if own_load:
        load.start()
    eventually(lambda: load.ok >= 20, timeout=60, what="predictions flowing")
    submissions = Trainings(api, every_s=train_every_s, limit=trainings).start() if train_every_s else None
    time.sleep(warm_s)
    fault_at = time.monotonic()
    over_at = fault()
    try:
        eventually(lambda: load.ok_after(over_at), timeout=60, interval=0.05, what="a prediction succeeds again")
    finally:
        time.sleep(after_s)
        if submissions is not None:
            submissions.stop()
        if own_load:
            load.stop()
    out = Outcome(scenario, dep.transport)
    window = [s for s in load.samples if s.started >= fault_at - warm_s]
    out.predictions = len(window)
    failures = [s for s in window if s.outcome != "200"]
    out.failed = Counter(s.outcome for s in failures)
    out.failure_kinds = load.details.copy()
    out.slowest_failure_s = max((s.took for s in failures), default=0.0)
    if not failures:
        out.recover_s = 0.0
    else:
        last_failure = max(s.started for s in failures)
        out.failed_after_s = last_failure - over_at
        healed = min((s.started + s.took for s in window if s.outcome == "200" and s.started >= last_failure),
                     default=None)
        if healed is not None:
            out.recover_s = max(0.0, healed - over_at)
            out.disrupted_s = healed - min(s.started for s in failures)
    if submissions is not None:
        out.accepted, out.succeeded, out.unfinished = submissions.settle()
        if submissions.refused:
            out.notes.append(f"submissions refused: {dict(submissions.refused)}")
        if submissions.problems:
            out.notes.append(f"not succeeded exactly once: {submissions.problems}")
        if submissions.events_missing:
            out.notes.append(f"{submissions.events_missing} task.succeeded events lost (emitted while the broker was down)")
    return out


def scenario_close_all(dep: Deployment, broker: PrivateRabbitMQ, **kw: Any) -> Outcome:
    def fault() -> float:
        broker.close_all()
        return time.monotonic()

    return measure("broker closes every connection", dep, fault, **kw)


def scenario_redis_restart(dep: Deployment, broker: PrivateRedis, **kw: Any) -> Outcome:
    def fault() -> float:
        broker.restart()
        return time.monotonic()

    return measure("Redis restarted", dep, fault, **kw)


def scenario_broker_outage(dep: Deployment, broker: PrivateRabbitMQ, seconds: float = 10, **kw: Any) -> Outcome:
    def fault() -> float:
        broker.stop_app()
        time.sleep(seconds)
        broker.start_app()
        return time.monotonic()

    return measure(f"RabbitMQ stopped {seconds:g} s", dep, fault, **kw)


def scenario_postgres_terminate(dep: Deployment, **kw: Any) -> Outcome:
    ended: list[int] = []

    def fault() -> float:
        ended.append(terminate_postgres_sessions(dep.application_name))
        return time.monotonic()

    out = measure("PostgreSQL ends the api's sessions", dep, fault, **kw)
    out.notes.append(f"{ended[0]} sessions terminated")
    return out


def scenario_rolling_restart(dep: Deployment, **kw: Any) -> Outcome:
    """SIGTERM each server in turn, wait for it to leave, start its replacement, wait until it serves."""
    timings: list[str] = []

    def fault() -> float:
        for i, server in enumerate(list(dep.servers)):
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal once it has shut down cleanly, hence -SIGTERM
            code = server.proc.wait(timeout=60)
            assert code in (0, -signal.SIGTERM), server.tail()
            left = time.monotonic() - started
            replacement = dep.cluster.start("server", f"{server.name}-r")
            # Ready once it holds a version (it takes requests only then); trainings meanwhile add versions.
            eventually(lambda r=replacement: r.models().get("diabetes") is not None, timeout=120,
                       what=f"{replacement.name} serves diabetes")
            timings.append(f"server{i + 1}: left in {left:.2f} s, replacement ready in {time.monotonic() - started:.1f} s")
            dep.servers[i] = replacement
        return time.monotonic()

    out = measure("rolling restart of 2 servers", dep, fault, **kw)
    out.notes += timings
    return out


def scenario_server_kill(dep: Deployment, **kw: Any) -> Outcome:
    """SIGKILL one of two servers under load; the other one takes over. A replacement is started after."""

    def fault() -> float:
        victim = dep.servers[0]
        victim.kill()
        return time.monotonic()

    out = measure("a server killed (SIGKILL)", dep, fault, **kw)
    dep.servers[0] = dep.cluster.start("server", f"{dep.servers[0].name}-k")
    dep.wait_servers()
    return out


def scenario_trainer_kills(dep: Deployment, kills: int = 10) -> Outcome:
    """SIGKILL the trainer mid-training `kills` times in a row (a new one each time): every task ends succeeded once."""
    api = dep.the_api
    out = Outcome(f"trainer killed mid-training x{kills}", dep.transport)
    params = {"epochs": 60, "batch_size": 8, "early_stopping": None}
    task_ids = [submit(api, **params) for _ in range(kills)]
    for i in range(kills):
        running = eventually(lambda: next((t for t in task_ids if task(api, t)["status"] == "running"
                                           and (task(api, t).get("progress") or {}).get("epoch", 0) >= 1), None),
                             timeout=120, interval=0.2, what="a task training")
        assert running is not None
        assert dep.trainer is not None
        dep.trainer.kill()
        dep.restart_trainer(f"trainer-k{i + 1}")
    outcomes = [wait_task(api, t, timeout=300) for t in task_ids]
    once = succeeded_once(api, [t["task_id"] for t in outcomes if t["status"] == "succeeded"])
    out.accepted = len(task_ids)
    out.succeeded = sum(1 for n in once.values() if n == 1)
    out.unfinished = sum(1 for t in outcomes if t["status"] != "succeeded")
    out.notes.append(f"attempts per task: {sorted(Counter(int(t['attempts']) for t in outcomes).items())}")
    return out


def scenario_drop_then_kill(dep: Deployment) -> Outcome:
    """The broker drops the trainer's connections mid-training, then the trainer is SIGKILLed."""
    api = dep.the_api
    out = Outcome("drop during training, then trainer SIGKILL", dep.transport)
    task_id = submit(api, **LONG_TRAINING)
    eventually(epoch_reached(api, task_id, 2), timeout=120, what="training under way")
    dep.drop("trainer")
    assert dep.trainer is not None
    dep.trainer.kill()
    dep.restart_trainer("trainer-after-drop")
    result = wait_task(api, task_id)
    out.accepted = 1
    out.succeeded = int(result["status"] == "succeeded" and succeeded_once(api, [task_id])[task_id] == 1)
    out.notes.append(f"attempts {result['attempts']}")
    return out


def scenario_two_drops(dep: Deployment) -> Outcome:
    """Two broker drops of the trainer's connections during one training."""
    api = dep.the_api
    out = Outcome("two drops during one training", dep.transport)
    task_id = submit(api, **LONG_TRAINING)
    eventually(epoch_reached(api, task_id, 2), timeout=120, what="training under way")
    dep.drop("trainer")
    epoch = int(task(api, task_id)["progress"]["epoch"])
    eventually(epoch_reached(api, task_id, epoch + 2), timeout=60, what="training goes on after the first drop")
    dep.drop("trainer")
    result = wait_task(api, task_id)
    out.accepted = 1
    out.succeeded = int(result["status"] == "succeeded" and succeeded_once(api, [task_id])[task_id] == 1)
    out.notes.append(f"attempts {result['attempts']}")
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def scenario_swaps(dep: Deployment, swaps: int = 50) -> tuple[float, float, float]:
    """Deploy two versions alternately `swaps` times; a server's RSS (MB): before, after, highest seen."""
    api = dep.the_api
    versions = sorted(v["version"] for v in http("GET", f"{api.url}/models/diabetes")[1]["versions"])
    while len(versions) < 2:
        wait_task(api, submit(api, **QUICK_TRAINING))
        versions = sorted(v["version"] for v in http("GET", f"{api.url}/models/diabetes")[1]["versions"])
    a, b = versions[-2:]
    server = dep.servers[0]
    _deploy(api, b)
    eventually(lambda: server.models().get("diabetes") == b, timeout=60, what=f"v{b} served")
    time.sleep(1)
    before = highest = rss_mb(server.proc.pid)
    for i in range(swaps):
        target = a if i % 2 == 0 else b
        _deploy(api, target)
        eventually(lambda t=target: server.models().get("diabetes") == t, timeout=60, interval=0.05,
                   what=f"swap {i + 1} to v{target}")
        highest = max(highest, rss_mb(server.proc.pid))
    time.sleep(2)  # the retired version is released once its last requests are answered
    return before, rss_mb(server.proc.pid), highest


def _deploy(api: Role, version: int) -> None:
    status, body = http("POST", f"{api.url}/models/diabetes/versions/{version}/deploy")
    assert status in (200, 202), body


@contextlib.contextmanager
def workdir(prefix: str = "skipper-faults-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

"""Predict throughput and latency over HTTP, Skipper beside a bare endpoint, in one run.

Starts each deployment as real processes, trains `diabetes` through its API, then drives
`POST /models/diabetes/predict` with wrk (a separate load generator, not a Python client
competing for the same cores) at each concurrency, and prints a table with ratios to the
bare endpoint. Machines are shared and noisy: compare ratios. The bare endpoint starts once
the first variant has trained the model and is measured in every variant's rounds, between
that variant's own measurements (the `bare @ <variant>` rows): each ratio compares figures
of the same minutes, not of two ends of a quarter-hour run. With `--rounds`, each figure is
the median of its rounds (p99 the worst).

Beside the wall-clock figures, each row has the CPU time (user + system, from /proc) that the
deployment's own processes (api, servers; the all-in-one process; the bare endpoint) spent per
request during the measurement, plus, in brackets and included, the local broker's (RabbitMQ's
`beam.smp`, `redis-server`; it serves only this benchmark when the machine is otherwise idle).
Throughput on a shared 2-core machine moves by a quarter when other jobs' load shifts; CPU per
request moves less within a run (a slower hour of the host raises both). At concurrency 1 it is
mostly what each wake-up costs (TensorFlow's pools spinning, caches cold after the other processes
ran; the api's main thread spends ~6 times its CPU per request at 64): read it at 8 and 64.

At concurrency 1, each variant over RabbitMQ (the RabbitMQ transport or Dramatiq's) is also
measured against RabbitMQ's own round trip, in the same rounds (`broker floor @ <variant>`, from
`broker_floor.py`: Skipper's AMQP stack passing one small message to an echo server and back, no
Skipper code). A last table puts each split's p50 over the all-in-one process's beside that round
trip: what is left is the split's own cost (envelope, tasks, the server's handler).

    python benchmarks/predict.py                         # memory + bare
    python benchmarks/predict.py --variants memory,rabbitmq,rabbitmq-2,bare --duration 8
    python benchmarks/predict.py --variants memory --protocols native,oip,tfserving --concurrency 64 --rounds 4

Unless `--no-lifecycle`, each Skipper deployment also reports its start-up and rollout times:
the api ready (`/ready` answers 200) after its process started; a fresh server ready with two
models (`diabetes` and `wine`) to catch up from the registry (broker variants); and the rollout,
from a deploy request (a rollback to v1, then v2 again) until every replica's `/ready` names the
new version, while wrk keeps predicting (its failed requests are counted).

`--protocols` also drives each Skipper deployment through the Open Inference Protocol
(`POST /v2/models/diabetes/infer`) and TensorFlow Serving's REST API (`POST /v1/models/diabetes:predict`),
back to back with the native route on the same processes and model, and reports each as a
ratio to the native route of that deployment (`vs native`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "/api/v1/skipper"
ROW = [0.038, 0.050, 0.061, 0.021, -0.044, -0.034, -0.043, -0.002, 0.019, -0.017]
BROKERS = {
    "rabbitmq": ("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "dramatiq-rabbitmq": ("dramatiq", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    "dramatiq-redis": ("dramatiq", "redis://127.0.0.1:6379/14"),
}


PROTOCOLS = ("native", "oip", "tfserving")


def protocol_request(protocol: str, predict_url: str, rows: int) -> tuple[str, dict[str, object]]:
    """The URL and body of one prediction of `rows` rows through `protocol`, given the native predict URL."""
    root = predict_url.split(BASE, 1)[0]
    if protocol == "oip":
        return f"{root}/v2/models/diabetes/infer", {"inputs": [
            {"name": "input", "shape": [rows, len(ROW)], "datatype": "FP32", "data": ROW * rows}]}
    if protocol == "tfserving":
        return f"{root}/v1/models/diabetes:predict", {"instances": [ROW] * rows}
    return predict_url, {"instances": [ROW] * rows}


@dataclass
class Lifecycle:
    variant: str
    api_ready_s: float
    server_ready_s: float | None = None  # a fresh server, two models to catch up (broker variants)
    rollouts_s: tuple[float, ...] = ()
    rollout_requests: int = 0
    rollout_failures: int = 0


@dataclass
class Result:
    variant: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None  # CPU of the deployment's own processes per request (None: not measurable)
    broker_cpu_us: float | None = None  # ... and of the local broker's process


def cpu_seconds(pids: list[int]) -> float | None:
    """User plus system CPU seconds the processes `pids` have used so far (Linux /proc); None if unreadable."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


def pids_named(name: str) -> list[int]:
    """Processes whose command name is `name` (the local broker)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == name:
                found.append(int(comm.parent.name))
    return found


BROKER_PROCESS = {"rabbitmq": "beam.smp", "dramatiq-rabbitmq": "beam.smp", "dramatiq-redis": "redis-server"}


def split_variant(variant: str) -> tuple[str, int]:
    """A broker variant's broker and number of servers: `rabbitmq-2` -> ("rabbitmq", 2)."""
    broker, servers = variant.rsplit("-", 1) if variant[-1].isdigit() else (variant, "1")
    return broker, int(servers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: object | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, timeout: float = 120, proc: subprocess.Popen[bytes] | None = None,
              interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if http("GET", url, timeout=2)[0] == 200:
                return
        time.sleep(interval)
    raise TimeoutError(url)


class Processes:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def skipper(procs: Processes, name: str, role: str, env: dict[str, str],
            ready: bool = False) -> tuple[str, subprocess.Popen[bytes], float]:
    """Start a Skipper process; (its API URL, the process, seconds until /health, or /ready with `ready`, said 200)."""
    port = free_port()
    started = time.monotonic()
    proc = procs.start(name, ["-m", "skipper", f"--role={role}", f"--port={port}"], env)
    url = f"http://127.0.0.1:{port}{BASE}"
    wait_http(f"{url}/{'ready' if ready else 'health'}", proc=proc, interval=0.02)
    return url, proc, time.monotonic() - started


def served(ready_url: str) -> dict[str, int]:
    with contextlib.suppress(OSError, ValueError):
        status, body = http("GET", ready_url, timeout=2)
        if status in (200, 503):
            return dict(json.loads(body).get("models") or {})
    return {}


def train(api: str, server_ready_urls: list[str], epochs: int, workflow: str = "diabetes") -> int:
    """Train `workflow` and wait until every server serves the new version; that version."""
    status, body = http("POST", f"{api}/workflows/{workflow}/train", {"params": {"epochs": epochs}})
    assert status == 202, body
    task_id = json.loads(body)["task_id"]
    deadline = time.monotonic() + 300
    while True:
        task = json.loads(http("GET", f"{api}/tasks/{task_id}")[1])
        if task["status"] == "succeeded":
            break
        if task["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"training did not succeed: {task}")
        time.sleep(0.5)
    version = int(task["result"]["model_version"])
    model = task["result"]["model"]
    for ready in server_ready_urls:
        while served(ready).get(model) != version:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready} never served version {version}")
            time.sleep(0.3)
    return version


def rollout(api: str, ready_urls: list[str], version: int, timeout: float = 60) -> float:
    """Deploy `version` of diabetes; seconds from the request until every replica serves it."""
    started = time.monotonic()
    status, body = http("POST", f"{api}/models/diabetes/versions/{version}/deploy")
    assert status == 200, body
    pending = list(ready_urls)
    while pending:
        pending = [url for url in pending if served(url).get("diabetes") != version]
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{pending} never served version {version}")
        if pending:
            time.sleep(0.01)
    return time.monotonic() - started


def measure_rollouts(deployed: Deployment, lifecycle: Lifecycle, lua: Path) -> None:
    """Roll diabetes back to the version before the latest and forward again while wrk predicts all along."""
    latest = max(served(url).get("diabetes", 0) for url in deployed.ready_urls)
    load = subprocess.Popen(["wrk", "-t1", "-c8", "-d12s", "-s", str(lua), deployed.predict_url], stdout=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(1.5)
        first = rollout(deployed.api, list(deployed.ready_urls), latest - 1)
        time.sleep(1.0)
        second = rollout(deployed.api, list(deployed.ready_urls), latest)
        out, _ = load.communicate(timeout=30)
    finally:
        if load.poll() is None:
            load.kill()
    lifecycle.rollouts_s = (first, second)
    if m := re.search(r"(\d+) requests in", out):
        lifecycle.rollout_requests = int(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        lifecycle.rollout_failures += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        lifecycle.rollout_failures += sum(int(g) for g in m.groups())


@dataclass
class Deployment:
    predict_url: str
    api: str = ""
    ready_urls: tuple[str, ...] = ()
    lifecycle: Lifecycle | None = None
    pids: tuple[int, ...] = ()  # the deployment's processes that serve predictions
    broker_pids: tuple[int, ...] = ()


@contextlib.contextmanager
def deployment(variant: str, procs: Processes, workdir: Path, epochs: int, artifact: Path,
               lifecycle: bool) -> Iterator[Deployment]:
    """Start one variant. `artifact` is written by the first Skipper variant.

    With `lifecycle`, the api's start-up is timed, `wine` and a second version of `diabetes` are
    trained, and (broker variants) one more server is started and timed until it is ready with both.
    """
    data_dir = workdir / variant
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = {"SKIPPER_DATA_DIR": str(data_dir), "SKIPPER_LOG_LEVEL": "WARNING", "SKIPPER_NAMESPACE": namespace}
    try:
        if variant == "bare":
            port = free_port()
            proc = procs.start("bare", [str(ROOT / "benchmarks" / "bare_endpoint.py"), "--artifact", str(artifact),
                                        f"--port={port}"], {})
            wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
            yield Deployment(f"http://127.0.0.1:{port}/predict", pids=(proc.pid,))
            return
        trainer = None
        broker: str | None = None
        if variant == "memory":
            api, _, api_ready_s = skipper(procs, variant, "all", env, ready=True)
            ready = [f"{api}/ready"]
        else:
            broker, servers = split_variant(variant)
            transport, url = BROKERS[broker]
            env |= {"SKIPPER_TRANSPORT": transport, "SKIPPER_BROKER_URL": url}
            api, _, api_ready_s = skipper(procs, f"{variant}-api", "api", env, ready=True)
            _, trainer, _ = skipper(procs, f"{variant}-trainer", "trainer", env)
            ready = [f"{skipper(procs, f'{variant}-server{i}', 'server', env)[0]}/ready" for i in range(servers)]
        train(api, ready, epochs)
        timed = Lifecycle(variant, api_ready_s) if lifecycle else None
        if timed is not None:
            train(api, ready, epochs, "wine")
            if variant != "memory":
                _, late, timed.server_ready_s = skipper(procs, f"{variant}-late-server", "server", env, ready=True)
                late.send_signal(signal.SIGTERM)  # measured: it takes no part in what follows
                late.wait(timeout=30)
            train(api, ready, epochs)  # diabetes v2: the rollouts go back to v1 and forward again
        if trainer is not None:
            trainer.send_signal(signal.SIGTERM)  # its work is done: free its core for the measurement
        if not artifact.exists():
            status, data = http("GET", f"{api}/models/diabetes/versions/1/artifact")
            assert status == 200
            artifact.write_bytes(data)
        # What serves predictions: not the trainer (stopping) nor the late server (stopped).
        serving = tuple(p.pid for p in procs.procs if p.poll() is None and p is not trainer)
        broker_pids = tuple(pids_named(BROKER_PROCESS[broker])) if broker is not None else ()
        yield Deployment(f"{api}/models/diabetes/predict", api, tuple(ready), timed, serving, broker_pids)
    finally:
        procs.stop_all()


LATENCY = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


Measured = tuple[float, float, float, int, float | None, float | None]


def run_wrk(url: str, concurrency: int, duration: int, lua: Path, deployed: Deployment) -> Measured:
    """(req/s, p50 ms, p99 ms, errors, CPU us per request of the deployment's processes, ... of the broker's)."""
    # Warm up, then measure.
    subprocess.run(["wrk", "-t1", f"-c{concurrency}", "-d1s", "-s", str(lua), url], capture_output=True, check=True)
    before = cpu_seconds(list(deployed.pids)), cpu_seconds(list(deployed.broker_pids))
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    after = cpu_seconds(list(deployed.pids)), cpu_seconds(list(deployed.broker_pids))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    lat = {int(p): float(v) * scale[u] for p, v, u in LATENCY.findall(out)}
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors:.*?timeout (\d+)", out):
        errors += int(m.group(1))
    cpu = [None if b is None or a is None or not requests or not pids else (a - b) * 1e6 / requests
           for b, a, pids in zip(before, after, (deployed.pids, deployed.broker_pids), strict=True)]
    return rps, lat.get(50, float("nan")), lat.get(99, float("nan")), errors, cpu[0], cpu[1]


def run_floor(url: str, duration: int) -> Measured:
    """RabbitMQ's round trip with no Skipper code (`broker_floor.py`), as a measurement of one connection."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "broker_floor.py"), "--url", url,
                          "--duration", str(duration), "--json"], capture_output=True, text=True, check=True).stdout
    floor = json.loads(out)
    return floor["round_trips_per_s"], floor["p50_ms"], floor["p99_ms"], 0, None, floor["broker_cpu_us"]


def report(name: str, c: int, run: Measured) -> None:
    rps, p50, p99, errors, cpu, _ = run
    print(f"  {name:<24} c={c:<3} {rps:>9.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms"
          f"  errors {errors}  cpu {cpu or float('nan'):.0f} us/req", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known and len(known) == len(values) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="memory,bare",
                        help="comma-separated: memory, rabbitmq, rabbitmq-2, dramatiq-rabbitmq, dramatiq-redis, bare")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1, help="instances per request")
    parser.add_argument("--protocols", default="native", help="comma-separated: native, oip, tfserving")
    parser.add_argument("--lifecycle", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure start-up and rollout times (trains two more versions per deployment)")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per variant and level, interleaved "
                                                                 "(medians: req/s, p50, CPU; p99 is the worst)")
    args = parser.parse_args()
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if unknown := set(protocols) - set(PROTOCOLS):
        sys.exit(f"unknown protocol {sorted(unknown)[0]!r}; choose among {', '.join(PROTOCOLS)}")
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install wrk")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with_bare = "bare" in variants
    variants = [v for v in variants if v != "bare"]
    if with_bare and not variants:
        sys.exit("the bare endpoint serves a model a Skipper variant trains: name one too")
    levels = [int(c) for c in args.concurrency.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="skipper-bench-"))
    artifact = workdir / "diabetes.tar.gz"
    procs = Processes(workdir)
    results: list[Result] = []
    lifecycles: list[Lifecycle] = []
    with contextlib.ExitStack() as stack:
        bare: Deployment | None = None
        bare_lua = workdir / "post-bare.lua"
        try:
            for variant in variants:
                with deployment(variant, procs, workdir, args.epochs, artifact, args.lifecycle) as deployed:
                    if with_bare and bare is None:
                        # Started once the first variant trained its model, then kept: it is measured in every
                        # variant's rounds, beside it, so each ratio compares two figures of the same minutes.
                        bare = stack.enter_context(deployment("bare", Processes(workdir), workdir, args.epochs,
                                                              artifact, False))
                        _, body = protocol_request("native", bare.predict_url, args.rows)
                        bare_lua.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                                            'wrk.headers["Content-Type"] = "application/json"\n')
                    measure_variant(variant, deployed, bare, bare_lua, protocols, levels, args, workdir, results)
                    if deployed.lifecycle is not None:  # last: it changes the version served
                        lua = workdir / "rollout.lua"
                        _, body = protocol_request("native", deployed.predict_url, args.rows)
                        lua.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                                       'wrk.headers["Content-Type"] = "application/json"\n')
                        measure_rollouts(deployed, deployed.lifecycle, lua)
                        lifecycles.append(deployed.lifecycle)
        finally:
            procs.stop_all()
    print_table(results)
    print_floors(results)
    if lifecycles:
        print_lifecycles(lifecycles)
    print(f"\nlogs: {workdir}")


def measure_variant(variant: str, deployed: Deployment, bare: Deployment | None, bare_lua: Path,
                    protocols: list[str], levels: list[int], args: argparse.Namespace, workdir: Path,
                    results: list[Result]) -> None:
    """Measure `variant` (each protocol) and, beside it in the same rounds, the bare endpoint (`bare @ variant`)."""
    targets: list[tuple[str, str, Path, Deployment]] = []
    for protocol in protocols:
        url, body = protocol_request(protocol, deployed.predict_url, args.rows)
        status, reply = http("POST", url, body)
        assert status == 200, reply
        lua = workdir / f"post-{protocol}.lua"
        lua.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                       'wrk.headers["Content-Type"] = "application/json"\n')
        name = variant if protocol == "native" else f"{variant}/{protocol}"
        targets.append((name, url, lua, deployed))
    if bare is not None:
        targets.append((f"bare @ {variant}", bare.predict_url, bare_lua, bare))
    for c in levels:
        # Interleaved in rounds at each level, so drifting load on a shared machine hits each alike.
        rounds: dict[str, list[Measured]] = {name: [] for name, _, _, _ in targets}
        broker_url = BROKERS[split_variant(variant)[0]][1] if variant != "memory" else ""
        floor = f"broker floor @ {variant}" if c == 1 and broker_url.startswith("amqp") else None
        if floor is not None:
            rounds[floor] = []
        for _ in range(args.rounds):
            for name, url, lua, measured in targets:
                run = run_wrk(url, c, args.duration, lua, measured)
                rounds[name].append(run)
                report(name, c, run)
            if floor is not None:  # the broker's own round trip, in the same minutes (broker_floor.py)
                rounds[floor].append(run_floor(broker_url, args.duration))
                report(floor, c, rounds[floor][-1])
        for name, runs in rounds.items():
            results.append(Result(name, c, median([r[0] for r in runs]), median([r[1] for r in runs]),
                                  max(r[2] for r in runs), sum(r[3] for r in runs),
                                  median_known([r[4] for r in runs]), median_known([r[5] for r in runs])))


def print_table(results: list[Result]) -> None:
    """One row per measured target; each ratio to the bare endpoint is to the one measured beside that variant."""
    bare = {(r.variant.split(" @ ", 1)[1], r.concurrency): r for r in results if r.variant.startswith("bare @ ")}
    native = {(r.variant, r.concurrency): r for r in results if "/" not in r.variant}
    print("\n| variant | concurrency | req/s | p50 ms | p99 ms | errors | req/s vs bare | p50 vs bare | req/s vs native "
          "| CPU us/req (broker) | CPU vs bare |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        group = r.variant.split(" @ ", 1)[1] if r.variant.startswith("bare @ ") else r.variant.split("/", 1)[0]
        b = bare.get((group, r.concurrency))
        n = native.get((r.variant.split("/", 1)[0], r.concurrency)) if "/" in r.variant else None
        ratio_rps = f"{r.rps / b.rps:.2f}x" if b else "-"
        ratio_p50 = f"{r.p50_ms / b.p50_ms:.2f}x" if b else "-"
        ratio_native = f"{r.rps / n.rps:.2f}x" if n else "-"
        total = None if r.cpu_us is None else r.cpu_us + (r.broker_cpu_us or 0.0)
        cpu = "-" if total is None else f"{total:.0f}" + (f" ({r.broker_cpu_us:.0f})" if r.broker_cpu_us else "")
        if total is None and r.broker_cpu_us is not None:  # the broker floor: only the broker is ours to read
            cpu = f"({r.broker_cpu_us:.0f})"
        ratio_cpu = f"{total / b.cpu_us:.2f}x" if total is not None and b and b.cpu_us else "-"
        print(f"| {r.variant} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
              f"{ratio_rps} | {ratio_p50} | {ratio_native} | {cpu} | {ratio_cpu} |")


def print_floors(results: list[Result]) -> None:
    """At concurrency 1: each AMQP split's p50 over the all-in-one one, beside RabbitMQ's own round trip."""
    at_1 = {r.variant: r for r in results if r.concurrency == 1}
    alone = at_1.get("memory")
    floors = [(name.split(" @ ", 1)[1], r) for name, r in at_1.items() if name.startswith("broker floor @ ")]
    if alone is None or not floors:
        return
    print("\n| variant | p50 at 1 ms | over all-in-one ms | RabbitMQ round trip p50 ms (no Skipper code) "
          "| over all-in-one + round trip ms |")
    print("|---|---:|---:|---:|---:|")
    for variant, floor in floors:
        split = at_1[variant]
        print(f"| {variant} | {split.p50_ms:.2f} | {split.p50_ms - alone.p50_ms:.2f} | {floor.p50_ms:.2f} "
              f"| {split.p50_ms - alone.p50_ms - floor.p50_ms:.2f} |")


def print_lifecycles(lifecycles: list[Lifecycle]) -> None:
    print("\n| variant | api ready s | server ready s (2 models) | rollout s (v1, v2) | requests during rollout "
          "| failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for lc in lifecycles:
        server = f"{lc.server_ready_s:.2f}" if lc.server_ready_s is not None else "-"
        rollouts = ", ".join(f"{r:.2f}" for r in lc.rollouts_s)
        print(f"| {lc.variant} | {lc.api_ready_s:.2f} | {server} | {rollouts} | {lc.rollout_requests} "
              f"| {lc.rollout_failures} |")


if __name__ == "__main__":
    main()

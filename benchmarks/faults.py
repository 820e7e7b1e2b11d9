"""The fault suite: what accepted work and live traffic go through when brokers, databases and roles fail.

Real processes (api, trainer, two servers) on real brokers, all on 127.0.0.1. Whole-broker faults
hit a private RabbitMQ node and a private Redis this script starts on free ports (the shared ones
are left alone); PostgreSQL faults end only this deployment's sessions (by `application_name`).
Each scenario runs under prediction load from wrk (16 connections) plus a Python probe that
records every request (when it failed, how, when predictions succeeded again), with small
trainings submitted every few seconds. The scenarios' code is shared with the tests
(`tests/faultkit.py`, `tests/e2e/test_fault_scenarios.py`).

    python benchmarks/faults.py                       # every scenario, about 10 minutes
    python benchmarks/faults.py --only close,outage   # some of them
    python benchmarks/faults.py --json faults.json    # the rows as JSON too

Needs root (a private RabbitMQ node), rabbitmq-server, redis-server, wrk, and the local PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import faultkit  # noqa: E402  (the repository root is on the path only now)
from tests.faultkit import Deployment, Outcome, PrivateRabbitMQ, PrivateRedis  # noqa: E402
from tests.processes import ROW  # noqa: E402

WRK_CONNECTIONS = 16
PROBE_CLIENTS = 2
SCENARIO = {"clients": PROBE_CLIENTS, "warm_s": 3.0, "after_s": 5.0, "train_every_s": 3.0, "trainings": 6}

LUA = """
wrk.method = "POST"
wrk.body = 'BODY'
wrk.headers["Content-Type"] = "application/json"
threads = {}
counts = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[tostring(k)] = (total[tostring(k)] or 0) + v end
  end
  io.write("STATUS")
  for k, v in pairs(total) do io.write(" " .. k .. "=" .. v) end
  local e = summary.errors
  io.write(string.format("\\nERRORS connect=%d read=%d write=%d timeout=%d status=%d\\n",
    e.connect, e.read, e.write, e.timeout, e.status))
  io.write(string.format("LATENCY p50=%d p99=%d max=%d\\n", latency:percentile(50), latency:percentile(99), latency.max))
end
""".replace("BODY", json.dumps({"instances": [ROW]}))


@dataclass
class WrkCounts:
    statuses: Counter[str] = field(default_factory=Counter)
    errors: dict[str, int] = field(default_factory=dict)
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + self.errors.get("timeout", 0) + self.errors.get("connect", 0)


class WrkLoad:
    """wrk driving predictions for as long as the scenario runs; stopped with SIGINT, which prints its summary."""

    def __init__(self, url: str, script: Path) -> None:
        self._cmd = ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", "-d600s", "--timeout", "10s", "-s", str(script), url]
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> WrkCounts:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)
        out, _ = self._proc.communicate(timeout=30)
        counts = WrkCounts()
        for line in out.splitlines():
            if line.startswith("STATUS"):
                counts.statuses = Counter({k: int(v) for k, v in (p.split("=") for p in line.split()[1:])})
            elif line.startswith("ERRORS"):
                counts.errors = {k: int(v) for k, v in (p.split("=") for p in line.split()[1:])}
            elif line.startswith("LATENCY"):
                values = dict(p.split("=") for p in line.split()[1:])
                counts.p99_ms, counts.max_ms = int(values["p99"]) / 1000, int(values["max"]) / 1000
        if not counts.statuses and not counts.errors:
            raise RuntimeError(f"wrk printed no summary:\n{out[-2000:]}")
        return counts


@dataclass
class Row:
    outcome: Outcome
    wrk: WrkCounts | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def failed(self) -> tuple[int, int, int, int]:
        """(fast 503, fast 504, hung, other) over wrk's and the probe's requests."""
        out, wrk = self.outcome, self.wrk or WrkCounts()
        hung = out.failed["hung"] + wrk.errors.get("timeout", 0)
        other = out.failures - out.failed["503"] - out.failed["504"] - out.failed["hung"]
        other += sum(n for s, n in wrk.statuses.items() if s not in ("200", "503", "504"))
        other += wrk.errors.get("connect", 0) + wrk.errors.get("read", 0) + wrk.errors.get("write", 0)
        return out.failed["503"] + wrk.statuses["503"], out.failed["504"] + wrk.statuses["504"], hung, other

    def cells(self) -> list[str]:
        out, wrk = self.outcome, self.wrk
        requests = out.predictions + (wrk.total if wrk else 0)
        f503, f504, hung, other = self.failed()
        recover = "-" if out.recover_s is None else f"{out.recover_s:.2f}"
        tasks = f"{out.accepted}/{out.succeeded}" if out.accepted else "-"
        return [out.scenario, out.transport, f"{requests:,}" if requests else "-", f"{f503:,}", f"{f504:,}",
                str(hung), str(other), recover, f"{out.disrupted_s:.2f}" if out.failures else "-", tasks]


HEADERS = ["scenario", "transport", "predictions", "503", "504", "hung", "other/500", "recovered (s)",
           "disrupted (s)", "tasks accepted/succeeded"]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def under_wrk(dep: Deployment, script: Path, run: Callable[[], Outcome]) -> Row:
    """Run one scenario with wrk loading the api alongside the probe."""
    wrk = WrkLoad(f"{dep.the_api.url}/models/diabetes/predict", script)
    wrk.start()
    try:
        outcome = run()
    finally:
        counts = wrk.stop()
    return Row(outcome, counts)


@contextmanager
def private_rabbitmq(workdir: Path) -> Iterator[PrivateRabbitMQ]:
    broker = PrivateRabbitMQ(workdir).start()
    try:
        yield broker
    finally:
        broker.stop()


def report(rows: list[Row], row: Row) -> None:
    rows.append(row)
    print(json.dumps({**row.outcome.line(), **({"wrk": {"statuses": dict(row.wrk.statuses), "errors": row.wrk.errors,
                                                         "p99_ms": row.wrk.p99_ms, "max_ms": row.wrk.max_ms}}
                                                        if row.wrk else {}), **row.extra}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated: close,dramatiq,redis,outage,postgres,"
                                                   "kills,drops,rolling,serverkill,swaps")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--outage-s", type=float, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the processes' logs and data in this directory")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install {tool.split('-')[0]})")
    if not faultkit.rabbitmq_available():
        sys.exit("a private RabbitMQ node needs rabbitmq-server and root")
    wanted = set(filter(None, args.only.split(","))) or {
        "close", "dramatiq", "redis", "outage", "postgres", "kills", "drops", "rolling", "serverkill", "swaps"}
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="skipper-faults-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        script = work / "predict.lua"
        script.write_text(LUA)
        with private_rabbitmq(work / "rmq") as rabbit:
            if wanted & {"close", "outage", "postgres", "kills", "drops", "rolling", "serverkill", "swaps"}:
                with faultkit.deployment("rabbitmq", rabbit, work / "dep-rabbitmq") as dep:
                    dep.first_model()
                    if "close" in wanted:
                        report(rows, under_wrk(dep, script, lambda: faultkit.scenario_close_all(dep, rabbit, **SCENARIO)))
                    if "outage" in wanted:
                        report(rows, under_wrk(dep, script, lambda: faultkit.scenario_broker_outage(
                            dep, rabbit, seconds=args.outage_s, **SCENARIO)))
                    if "postgres" in wanted:
                        report(rows, under_wrk(dep, script, lambda: faultkit.scenario_postgres_terminate(dep, **SCENARIO)))
                    if "rolling" in wanted:
                        report(rows, under_wrk(dep, script, lambda: faultkit.scenario_rolling_restart(dep, **SCENARIO)))
                    if "serverkill" in wanted:
                        report(rows, under_wrk(dep, script, lambda: faultkit.scenario_server_kill(dep, **SCENARIO)))
                    if "drops" in wanted:
                        report(rows, Row(faultkit.scenario_drop_then_kill(dep)))
                        report(rows, Row(faultkit.scenario_two_drops(dep)))
                    if "kills" in wanted:
                        report(rows, Row(faultkit.scenario_trainer_kills(dep, kills=args.kills)))
                    if "swaps" in wanted:
                        before, after, highest = faultkit.scenario_swaps(dep, swaps=args.swaps)
                        swaps = Row(Outcome(f"{args.swaps} swaps: server RSS {before:.0f} -> {after:.0f} MB "
                                            f"(highest {highest:.0f})", "rabbitmq"))
                        swaps.extra = {"rss_before_mb": round(before), "rss_after_mb": round(after),
                                       "rss_highest_mb": round(highest)}
                        report(rows, swaps)
            if "dramatiq" in wanted:
                with faultkit.deployment("dramatiq", rabbit, work / "dep-dramatiq-rabbitmq") as dep:
                    dep.first_model()
                    row = under_wrk(dep, script, lambda: faultkit.scenario_close_all(dep, rabbit, **SCENARIO))
                    row.outcome.transport = "dramatiq-rabbitmq"
                    report(rows, row)
        if "redis" in wanted:
            redis_broker = PrivateRedis(work / "redis").start()
            try:
                with faultkit.deployment("dramatiq", redis_broker, work / "dep-dramatiq-redis") as dep:
                    dep.first_model()
                    row = under_wrk(dep, script, lambda: faultkit.scenario_redis_restart(dep, redis_broker, **SCENARIO))
                    row.outcome.transport = "dramatiq-redis"
                    report(rows, row)
            finally:
                redis_broker.stop()
    print()
    print(table(rows))
    for row in rows:
        for note in row.outcome.notes:
            print(f"- {row.outcome.scenario} ({row.outcome.transport}): {note}")
    print(f"\n{len(rows)} scenarios in {time.monotonic() - started:.0f} s; wrk {WRK_CONNECTIONS} connections "
          f"+ {PROBE_CLIENTS} probe clients; 'recovered': from the fault's end (broker back) to the first success "
          "after the last failure; 'disrupted': first failure to that success.")
    if args.json:
        args.json.write_text(json.dumps([{**r.outcome.line(), "cells": dict(zip(HEADERS, r.cells(), strict=True))}
                                         for r in rows], indent=2))



if __name__ == "__main__":
    main()

"""A model of about 300 MB reaches two servers over RabbitMQ by reference, in chunks, as real processes.

The artifact travels trainer -> registry as chunk requests and registry -> servers as ranges (the
broker's own message limit, 128 MiB on RabbitMQ 3.x, would refuse it whole), each written to disk
as it arrives and checked against its checksum. Reports the time from publish to serving on each
replica and the peak resident memory of every process; the api never holds the artifact.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import pytest

from skipper.modules.serving.memory import footprint
from tests.processes import Cluster, eventually, http, postgres_schema, train
from tests.services import RABBITMQ_URL, require_postgres, require_rabbitmq

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.tensorflow]

CONFIG = """
workflows:
  big:
    description: A synthetic ~300 MB model (tests/bigmodel.py).
    model: big
    kind: regression
    dataset: {source: sklearn, name: diabetes}
    trainer: tests.bigmodel:train
    params: {epochs: 1, hidden_units: [4096, 18340], early_stopping: null}
    limits: {max_parameters: 100000000}
"""


def peak_rss_mb(pid: int) -> float:
    """The process's resident-memory high-water mark (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_300_mb_model_reaches_two_servers_by_reference(tmp_path: Path) -> None:
    require_rabbitmq()
    require_postgres()
    config = tmp_path / "big.yaml"
    config.write_text(CONFIG)
    with postgres_schema() as database_url:
        env = {"SKIPPER_TRANSPORT": "rabbitmq", "SKIPPER_BROKER_URL": RABBITMQ_URL, "SKIPPER_DATABASE_URL": database_url,
               "SKIPPER_NAMESPACE": f"big-{uuid.uuid4().hex[:10]}", "SKIPPER_CONFIG": str(config),
               "SKIPPER_SERVING__MAX_BATCH_SIZE": "8", "SKIPPER_LOG_LEVEL": "INFO"}
        cluster = Cluster(env=env, workdir=tmp_path)
        try:
            api = cluster.start("api", "api")
            trainer = cluster.start("trainer", "trainer")
            servers = [cluster.start("server", "server1"), cluster.start("server", "server2")]
            api_before = peak_rss_mb(api.proc.pid)

            task = train(api, "big", timeout=600)
            assert task["status"] == "succeeded", task
            eventually(lambda: all(s.models().get("big") == 1 for s in servers), timeout=300, interval=0.5,
                       what="both servers serve the big model")

            stored = list((tmp_path / "api-data").rglob("*.tar.gz"))
            assert len(stored) == 1 and stored[0].stat().st_size > 250 * 1024 * 1024, stored
            size = stored[0].stat().st_size

            def times(kind: str) -> list[float]:
                found = http("GET", f"{api.url}/events?kind={kind}&limit=100")[1]["events"]
                return [datetime.fromisoformat(e["at"]).timestamp() for e in found if e["fields"].get("model") == "big"]

            eventually(lambda: len(times("model.installed")) == 2, timeout=30, what="both installs recorded")
            published = min(times("model.published"))
            installed = sorted(t - published for t in times("model.installed"))

            status, body = http("POST", f"{api.url}/models/big/predict", {"instances": [[0.1] * 10]}, timeout=60)
            assert status == 200 and body["model_version"] == 1, body

            peaks = {r.name: peak_rss_mb(r.proc.pid) for r in [api, trainer, *servers]}
            weights = footprint({"parameters": 75_202_377}, size)
            print(f"\nbig model: artifact {size / 2**20:.0f} MiB; publish -> serving "
                  f"{', '.join(f'{s:.1f} s' for s in installed)}; peak RSS (MiB) "
                  f"{', '.join(f'{k} {v:.0f}' for k, v in peaks.items())}; api before {api_before:.0f}; "
                  f"guard's peak estimate per server {weights.peak_mb:.0f} MiB above its base")
            # The api only ever held a chunk of it at a time
            assert peaks["api"] - api_before < 100, (api_before, peaks)
            # Each server stayed within what the memory guard budgets for loading it (plus the process itself)
            for name in ("server1", "server2"):
                assert peaks[name] < weights.peak_mb + 1024, (name, peaks)
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.stop()

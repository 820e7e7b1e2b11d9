"""TensorFlow's pools in a serving process: one inter-op thread unless told otherwise, set before TensorFlow starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from skipper.core.settings import ServingSettings
from skipper.modules.serving.tfpools import size_tensorflow_pools


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)


def test_the_defaults_give_one_inter_op_thread_and_leave_intra_op_to_tensorflow(clean_environment: None) -> None:
    size_tensorflow_pools(ServingSettings())
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "1"
    assert "TF_NUM_INTRAOP_THREADS" not in os.environ


def test_settings_size_both_pools_and_zero_keeps_tensorflow_s_default(clean_environment: None) -> None:
    size_tensorflow_pools(ServingSettings(tf_inter_op_threads=0, tf_intra_op_threads=3))
    assert "TF_NUM_INTEROP_THREADS" not in os.environ
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "3"


def test_a_variable_already_in_the_environment_wins(clean_environment: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "4")
    size_tensorflow_pools(ServingSettings())
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "4"


INTER_OP_THREADS = """
import os
from skipper.core.settings import ServingSettings
from skipper.modules.serving.tfpools import size_tensorflow_pools
import tensorflow as tf  # imported first, as a process may well do: the sizes still apply at the first op
size_tensorflow_pools(ServingSettings(tf_inter_op_threads={threads}))
tf.constant([1.0]) + 1
names = [open(f"/proc/self/task/{{t}}/comm").read() for t in os.listdir("/proc/self/task")]
print(sum(name.startswith("tf_Compute") for name in names))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_tensorflow_starts_its_inter_op_pool_with_the_configured_size() -> None:
    # TensorFlow's inter-op threads are named tf_Compute; the machine has more than one core, so
    # TensorFlow's own default would start more than one (2 on a 2-core machine).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
    counts = {}
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", INTER_OP_THREADS.format(threads=threads)], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        counts[threads] = int(out.stdout.strip().splitlines()[-1])
    assert counts == {1: 1, 2: 2}

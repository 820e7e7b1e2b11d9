"""Keras imported for serving without scikit-learn, where no trainer shares the process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from skipper.modules.serving.keras_import import trains_here

IMPORT = """
import json, sys
from skipper.modules.serving.keras_import import import_keras
keras = import_keras(without_sklearn={without})
seen = {{"sklearn": "sklearn" in sys.modules, "scipy.stats": "scipy.stats" in sys.modules,
         "wrappers": "keras.src.wrappers.sklearn_wrapper" in sys.modules}}
layer = keras.layers.Dense(2)  # Keras works
seen["dense"] = tuple(layer(keras.ops.ones((1, 3))).shape)
import sklearn.base  # and scikit-learn still imports for whoever needs it (a custom predictor)
seen["sklearn_after"] = hasattr(sklearn.base, "BaseEstimator")
print(json.dumps(seen))
"""


def imported(without: bool) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", IMPORT.format(without=without)], capture_output=True, text=True,
                         timeout=180, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.tensorflow
def test_keras_imports_without_scikit_learn_and_scikit_learn_imports_afterwards() -> None:
    lean = imported(True)
    assert lean == {"sklearn": False, "scipy.stats": False, "wrappers": True, "dense": [1, 2], "sklearn_after": True}


@pytest.mark.tensorflow
def test_a_plain_import_brings_scikit_learn_the_cost_kept_out() -> None:
    # The premise: Keras itself imports scikit-learn (and SciPy's statistics) whenever it is installed.
    plain = imported(False)
    assert plain["sklearn"] is True and plain["scipy.stats"] is True and plain["sklearn_after"] is True


@pytest.mark.parametrize(("role", "trains"), [
    ("all", True), ("server", False), ("trainer,server", True), ("api,server", False), ("trainer", True),
])
def test_only_a_process_with_the_trainer_keeps_scikit_learn_in_keras(role: str, trains: bool) -> None:
    assert trains_here(role) is trains

"""Resource limits on training (`limits.*`), checked where a train request is accepted and again where it runs.

The parameter count is that of the dense network Skipper builds: the weights and biases of
every Dense layer from the inputs through the hidden layers to the outputs, computed from the
params before anything is allocated. Where the feature and output counts are not known yet
(the api before a workflow's first training), 1 stands in for them, so the api's count is a
lower bound and the trainer, which knows the data, checks the exact one.
"""

from __future__ import annotations

from collections.abc import Sequence

from skipper.core.errors import LimitExceeded
from skipper.core.settings import Limits, TrainParams


def dense_parameters(n_inputs: int, hidden_units: Sequence[int], n_outputs: int) -> int:
    """Weights and biases of Dense layers n_inputs -> hidden_units... -> n_outputs."""
    total, previous = 0, max(1, n_inputs)
    for units in [*hidden_units, max(1, n_outputs)]:
        total += (previous + 1) * units
        previous = units
    return total


def check_train_limits(params: TrainParams, limits: Limits, *, n_inputs: int = 1, n_outputs: int = 1) -> None:
    """`LimitExceeded` (422) naming the request field and the limit when params go past a limit."""
    if params.epochs > limits.max_epochs:
        raise LimitExceeded(
            f"params.epochs: {params.epochs} epochs is over limits.max_epochs ({limits.max_epochs})",
            details={"field": "params.epochs", "limit": "limits.max_epochs", "max": limits.max_epochs,
                     "value": params.epochs},
        )
    count = dense_parameters(n_inputs, params.hidden_units, n_outputs)
    if count > limits.max_parameters:
        raise LimitExceeded(
            f"params.hidden_units: the model would have {count:,} parameters, over limits.max_parameters "
            f"({limits.max_parameters:,})",
            details={"field": "params.hidden_units", "limit": "limits.max_parameters", "max": limits.max_parameters,
                     "value": count},
        )

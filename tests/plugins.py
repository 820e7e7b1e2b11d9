"""A user's trainer plug-in for tests: it always fails with an error Skipper does not classify."""

from __future__ import annotations

from skipper.modules.training.jobs import TrainJob, TrainResult


def explode(job: TrainJob) -> TrainResult:
    raise RuntimeError(f"the cluster ran out of unobtainium while training {job.workflow_name}")

"""A user's trainer plug-in for tests: it always fails with an error Skipper does not classify."""

from __future__ import annotations

from skipper.modules.training.jobs import TrainJob, TrainResult


def explode(job: TrainJob) -> TrainResult:
    raise RuntimeError(f"the cluster ran out of unobtainium while training {job.workflow_name}")


def until_stopped(job: TrainJob) -> TrainResult:
    """A trainer that runs epoch after epoch until asked to stop (by a cancel or by the time limit)."""
    import time

    from skipper.modules.training.jobs import EpochReport

    epoch = 0
    while not job.stop_requested():
        time.sleep(0.05)
        epoch += 1
        job.report_epoch(EpochReport(epoch=epoch, epochs=job.params.epochs, loss=1.0 / epoch, metrics={}))
    return TrainResult(features=["x"], targets=["y"], classes=None, cancelled=True)

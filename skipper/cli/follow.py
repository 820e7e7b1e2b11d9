"""`--follow`: a live progress bar on a terminal (one line per epoch otherwise) until the new version serves.

Ctrl-C asks whether to cancel the task; answering no goes back to following it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from skipper.cli import render
from skipper.cli.options import EXIT_FAILED, EXIT_INTERRUPTED, Cli

if TYPE_CHECKING:
    from skipper.client import Event, Task
    from skipper.client import Progress as EpochProgress

PHASES = {"task.queued": "queued", "task.started": "training", "task.trained": "registering",
          "task.succeeded": "installing", "model.published": "installing"}


def follow(cli: Cli, task: Task, install_timeout: float = 30.0) -> Task:
    """Wait for `task` with live progress; returns the finished task (errors propagate as the client raises them)."""
    while True:
        try:
            if cli.out.is_terminal and not cli.options.json:
                return _bar(cli, task, install_timeout)
            return _lines(cli, task, install_timeout)
        except KeyboardInterrupt:
            if not _cancel_asked(cli, task):
                cli.err.print("[dim]following again (Ctrl-C to stop)[/]")


def _bar(cli: Cli, task: Task, install_timeout: float) -> Task:
    columns = (
        TextColumn("[bold]{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss [cyan]{task.fields[loss]}[/]"), TextColumn("val_loss [magenta]{task.fields[val_loss]}[/]"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=cli.out, refresh_per_second=8) as bar:
        job = bar.add_task(task.status, total=None, loss="-", val_loss="-")

        def on_progress(p: EpochProgress) -> None:
            bar.update(job, total=p.epochs, completed=p.epoch, loss=render.number(p.loss),
                       val_loss=render.number(p.val_loss))

        def on_event(event: Event) -> None:
            phase = PHASES.get(event.kind)
            if phase:
                bar.update(job, description=phase)

        finished = task.wait(on_progress, on_event=on_event, install_timeout=install_timeout)
        bar.update(job, description="done")
        return finished


def _lines(cli: Cli, task: Task, install_timeout: float) -> Task:
    console = cli.err if cli.options.json else cli.out  # with --json, stdout carries only the JSON

    def on_progress(p: EpochProgress) -> None:
        val = f"  val_loss {render.number(p.val_loss)}" if p.val_loss is not None else ""
        console.print(f"epoch {p.epoch}/{p.epochs}  loss {render.number(p.loss)}{val}", soft_wrap=True)

    return task.wait(on_progress, install_timeout=install_timeout)


def _cancel_asked(cli: Cli, task: Task) -> bool:
    """After Ctrl-C: cancel the task if the user says so (exits), else False to follow on."""
    if not sys.stdin.isatty():
        cli.err.print(f"\ninterrupted; task {task.task_id} goes on: skipper task {task.task_id} --follow")
        raise typer.Exit(EXIT_INTERRUPTED)
    try:
        answer = typer.confirm(f"\nCancel task {task.task_id}?", default=False, err=True)
    except (KeyboardInterrupt, EOFError, typer.Abort):
        cli.err.print(f"\ntask {task.task_id} goes on: skipper task {task.task_id} --follow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not answer:
        return False
    from skipper.client import Conflict

    try:
        cancelled = cli.client.cancel(task.task_id)
    except Conflict as exc:  # it finished meanwhile: show how
        cli.err.print(f"not cancelled: {exc.message}")
        return False
    cli.err.print(f"cancelled task {cancelled.task_id}")
    raise typer.Exit(EXIT_FAILED)

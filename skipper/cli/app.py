"""The `skipper` command: serve, train with a live progress bar, predict, deploy. Built on `skipper.client`."""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Annotated

import typer

from skipper.cli import render
from skipper.cli.follow import follow
from skipper.cli.inputs import parse_params, read_rows
from skipper.cli.options import DEFAULT_URL, Cli, Globals, JsonFlag, RootKey, RootUrl, VersionFlag, command

if TYPE_CHECKING:
    from skipper.client import Task

app = typer.Typer(
    name="skipper",
    help="Skipper: train Keras models on request, keep every version, serve them. "
         "Global options go before or after the command.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would print the API key
    rich_markup_mode="rich",
)


class TaskStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


@app.callback()
def root(ctx: typer.Context, url: RootUrl = DEFAULT_URL, api_key: RootKey = None, as_json: JsonFlag = False,
         version: VersionFlag = False) -> None:
    ctx.obj = Globals(url=url, api_key=api_key, json=as_json)


@app.command("serve")
def serve(
    role: Annotated[str | None, typer.Option(help="all (default), api, trainer, server, or a comma-separated mix.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1, or SKIPPER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000, or SKIPPER_PORT).")] = None,
    config: Annotated[str | None, typer.Option(help="YAML file overriding the defaults (or SKIPPER_CONFIG).")] = None,
    version: VersionFlag = False,
) -> None:
    """Start Skipper: what `python -m skipper` does (all in one process by default)."""
    from skipper.__main__ import main as serve_main

    argv = [f"--{name}={value}" for name, value in (("role", role), ("host", host), ("port", port), ("config", config))
            if value is not None]
    logging.captureWarnings(True)
    raise typer.Exit(serve_main(argv))


@command(app, "workflows")
def workflows(cli: Cli) -> None:
    """The workflows the server can train, with their models and default epochs."""
    items = cli.client.workflows()
    cli.print_json(items.raw) if cli.options.json else cli.out.print(render.workflows(items))


@command(app, "train")
def train(
    cli: Cli,
    workflow: Annotated[str, typer.Argument(help="The workflow to train (see `skipper workflows`).")],
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", metavar="KEY=VALUE",
        help="Override a default; VALUE is YAML: -p epochs=30 -p hidden_units=[64,32] -p early_stopping.patience=3.")] = None,
    follow_it: Annotated[bool, typer.Option(
        "--follow", help="Show live progress; return once the new version serves, with its metrics.")] = False,
) -> None:
    """Queue a training task; with --follow, watch it train and get the version it produced."""
    task = cli.client.train(workflow, **parse_params(param or []))
    if not follow_it:
        if cli.options.json:
            cli.print_json(task.raw)
        else:
            cli.out.print(f"queued task [bold]{task.task_id}[/] ({workflow}); follow it: skipper task {task.task_id} --follow")
        return
    if not cli.options.json:
        cli.out.print(f"task [bold]{task.task_id}[/] queued ({workflow})")
    _report(cli, follow(cli, task))


@command(app, "tasks")
def tasks(
    cli: Cli,
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Only this workflow's tasks.")] = None,
    status: Annotated[TaskStatus | None, typer.Option("--status", "-s", help="Only tasks in this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=200, help="How many, newest first.")] = 20,
) -> None:
    """Training tasks, newest first."""
    page = cli.client.tasks(workflow, status.value if status else None, limit=limit)
    cli.print_json(page.raw) if cli.options.json else cli.out.print(render.tasks(page, page.total))


@command(app, "task")
def task(
    cli: Cli,
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    follow_it: Annotated[bool, typer.Option("--follow", help="Follow it until it is over (live progress).")] = False,
) -> None:
    """One task: status, progress, result or error."""
    found = cli.client.task(task_id)
    if follow_it:
        # A task already over had its install reported long ago, or never will: don't wait for one.
        _report(cli, follow(cli, found, install_timeout=0.0 if found.finished else 30.0))
        return
    cli.print_json(found.raw) if cli.options.json else cli.out.print(render.task(found))


@command(app, "cancel")
def cancel(cli: Cli, task_id: Annotated[str, typer.Argument(help="The task's id.")]) -> None:
    """Cancel a queued or running task (a running one stops at its next epoch)."""
    cancelled = cli.client.cancel(task_id)
    cli.print_json(cancelled.raw) if cli.options.json else cli.out.print(f"cancelled task {cancelled.task_id}")


@command(app, "predict", version_flag=False)
def predict(
    cli: Cli,
    model: Annotated[str, typer.Argument(help="The model (see `skipper models`).")],
    rows: Annotated[str | None, typer.Argument(
        help="JSON rows: '[[...], [...]]' in feature order, or objects by feature name.", show_default=False)] = None,
    file: Annotated[str | None, typer.Option(
        "--file", "-f", help="Rows from a .json file, a .csv file with a header of feature names, or - for stdin.")] = None,
    version: Annotated[int | None, typer.Option(
        "--version", help="Fail unless this version is the one serving (deploy it first).")] = None,
) -> None:
    """Predict with the model's production version."""
    instances = read_rows(rows, file)
    result = cli.client.predict(model, instances, version=version)
    cli.print_json(result.raw) if cli.options.json else cli.out.print(render.predictions(result))


@command(app, "models")
def models(cli: Cli, model: Annotated[str | None, typer.Argument(help="One model: its versions.")] = None) -> None:
    """Models with their production version; with MODEL, its versions and their metrics."""
    if model is None:
        items = cli.client.models()
        cli.print_json(items.raw) if cli.options.json else cli.out.print(render.models(items))
    else:
        found = cli.client.model(model)
        cli.print_json(found.raw) if cli.options.json else cli.out.print(render.model(found))


@command(app, "deploy")
def deploy(
    cli: Cli,
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[int, typer.Argument(help="The version to serve: a rollback or a promotion.")],
) -> None:
    """Make VERSION production; every server swaps to it."""
    deployed = cli.client.deploy(model, version)
    if cli.options.json:
        cli.print_json(deployed.raw)
    else:
        cli.out.print(f"{deployed.model} v{deployed.version} is production; every server swaps to it")


@command(app, "artifact")
def artifact(
    cli: Cli,
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[int, typer.Argument(help="The version.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Where to save it [default: MODEL-vVERSION.tar.gz].")]
    = None,
) -> None:
    """Download a version's artifact (tar.gz: model.keras + skipper.json), checked against its sha256."""
    saved = cli.client.download_artifact(model, version, output or f"{model}-v{version}.tar.gz")
    if cli.options.json:
        cli.print_json({"path": saved.path, "sha256": saved.sha256, "bytes": saved.size})
    else:
        cli.out.print(f"saved {saved.path} ({saved.size} bytes, sha256 {saved.sha256})")


keys_app = typer.Typer(help="Manage API keys (local: talks to no server).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option(help="Who or what uses the key (appears in audit events).")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: read, predict, train, deploy, admin.")],
    file: Annotated[str | None, typer.Option(help="Append the entry to this keys file (auth.keys_file).")] = None,
) -> None:
    """Make a new API key: printed once; Skipper stores only its SHA-256. What `python -m skipper keys new` does."""
    from skipper.__main__ import keys_main

    argv = ["new", f"--name={name}", f"--scopes={scopes}"] + ([f"--file={file}"] if file else [])
    raise typer.Exit(keys_main(argv))


def _report(cli: Cli, finished: Task) -> None:
    """The end of a followed task: its metrics and `version N` (the client raised already if it failed)."""
    if cli.options.json:
        cli.print_json(finished.raw)
        return
    result = finished.result
    if result is None:
        cli.out.print(f"task {finished.task_id} {finished.status}")
        return
    cli.out.print(render.metrics(result.metrics, f"{result.model} v{result.model_version} metrics"))
    if finished.installation is None:
        cli.err.print("[yellow]no server has reported installing it yet[/] (is a server role running?)")
    cli.out.print(f"version {result.model_version}")

"""Global options (`--url`, `--api-key`, `--json`, `--version`) before or after the command, and exit codes.

Click reads a group's options only before the subcommand's name, so `command()` gives every
client command the same options too (in its help under "Global options"); a value given after
the command wins over one given before it, which wins over the environment.

Exit codes: 0 success; 1 the request or the task failed (the server's message is printed);
2 usage error (Click's); 3 the server is unreachable; 130 interrupted, task left running.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from skipper import __version__

if TYPE_CHECKING:
    from rich.console import Console

    from skipper.client import Client

DEFAULT_URL = "http://127.0.0.1:8000"  # skipper.client.DEFAULT_URL, without importing httpx for `--help`
PANEL = "Global options"
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130

F = TypeVar("F", bound=Callable[..., Any])


def _show_version(value: bool) -> None:
    if value:
        print(f"skipper {__version__}")
        raise typer.Exit()


def _url_option(envvar: str | None) -> Any:
    return typer.Option("--url", envvar=envvar, rich_help_panel=PANEL, show_default=envvar is not None,
                        help="Skipper's address.")


def _key_option(envvar: str | None) -> Any:
    return typer.Option("--api-key", envvar=envvar, rich_help_panel=PANEL, show_default=False, show_envvar=False,
                        help="API key, sent as 'Authorization: Bearer' (env SKIPPER_API_KEY).")


JSON_OPTION = typer.Option("--json", rich_help_panel=PANEL, help="Print the server's JSON instead of tables.")
VERSION_OPTION = typer.Option("--version", callback=_show_version, is_eager=True, rich_help_panel=PANEL,
                              help="Print Skipper's version and exit.")

# The root callback's options: read the environment, hold the defaults.
RootUrl = Annotated[str, _url_option("SKIPPER_URL")]
RootKey = Annotated[str | None, _key_option("SKIPPER_API_KEY")]
JsonFlag = Annotated[bool, JSON_OPTION]
VersionFlag = Annotated[bool, VERSION_OPTION]


@dataclass(frozen=True, slots=True)
class Globals:
    url: str = DEFAULT_URL
    api_key: str | None = None
    json: bool = False


class Cli:
    """What a command works with: the merged global options, the consoles, and one client."""

    def __init__(self, options: Globals) -> None:
        from rich.console import Console

        self.options = options
        # Piped output gets room for whole rows rather than an 80-column guess.
        self.out: Console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        self.err: Console = Console(stderr=True, highlight=False, soft_wrap=True)
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            from skipper.client import Client

            self._client = Client(self.options.url, api_key=self.options.api_key)
        return self._client

    def print_json(self, body: Any) -> None:
        # Plain print: rich would wrap long lines and colour the JSON scripts parse.
        print(json.dumps(body, indent=2, ensure_ascii=False))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


_ADDED = [
    inspect.Parameter("global_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter("global_url", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, _url_option(None)]),
    inspect.Parameter("global_api_key", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, _key_option(None)]),
    inspect.Parameter("global_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonFlag),
]
_VERSION = inspect.Parameter("global_version", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VersionFlag)


def command(app: typer.Typer, name: str, *, version_flag: bool = True, **settings: Any) -> Callable[[F], F]:
    """Register `fn(cli, ...)` as command `name`, with the global options and the exit codes.

    `version_flag=False` for a command that has its own `--version` (predict's model version).
    """

    def register(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = list(signature.parameters.values())[1:]  # drop `cli`
        added = [*_ADDED, _VERSION] if version_flag else _ADDED

        @functools.wraps(fn)
        def run(**kwargs: Any) -> Any:
            ctx: typer.Context = kwargs.pop("global_ctx")
            url, api_key, as_json = kwargs.pop("global_url"), kwargs.pop("global_api_key"), kwargs.pop("global_json")
            kwargs.pop("global_version", None)
            options = ctx.find_object(Globals) or Globals()
            options = replace(options, url=url or options.url, api_key=api_key or options.api_key,
                              json=as_json or options.json)
            cli = Cli(options)
            try:
                with exit_codes(cli):
                    return fn(cli, **kwargs)
            finally:
                cli.close()

        run.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        app.command(name, **settings)(run)
        return fn

    return register


@contextmanager
def exit_codes(cli: Cli) -> Iterator[None]:
    """The client's errors as messages on stderr and the documented exit codes."""
    from skipper.client import ApiError, InvalidInput, ServerUnreachable, SkipperClientError

    try:
        yield
    except ServerUnreachable as exc:
        cli.err.print(f"[red]error:[/] {_escape(exc.message)}")
        cli.err.print("Is it running? Start it with [bold]skipper serve[/], or point --url / SKIPPER_URL at it.")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except ApiError as exc:
        if cli.options.json:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message, "details": exc.details}}))
        field = exc.field if isinstance(exc, InvalidInput) else None
        where = f" (field {field})" if field and field not in exc.message else ""
        cli.err.print(f"[red]error:[/] {_escape(exc.message)}{where} [dim]({exc.status} {exc.code})[/]")
        raise typer.Exit(EXIT_FAILED) from None
    except SkipperClientError as exc:
        cli.err.print(f"[red]error:[/] {_escape(exc.message)}")
        raise typer.Exit(EXIT_FAILED) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)

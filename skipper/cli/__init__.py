"""The `skipper` command (typer + rich), on top of `skipper.client`; imports neither TensorFlow nor httpx for `--help`."""

from __future__ import annotations


def main() -> None:
    """The console script's entry point."""
    from skipper.cli.app import app

    app(prog_name="skipper")

"""`python -m skipper --role=all|api|trainer|server [--config FILE] [--host H] [--port P]`,
and `python -m skipper keys new --name NAME --scopes a,b [--file F]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from skipper.core.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m skipper", description="Skipper ML workflow engine")
    parser.add_argument("--role", default=os.environ.get("SKIPPER_ROLE", "all"),
                        help="all (default), api, trainer, server, or a comma-separated combination")
    parser.add_argument("--config", default=os.environ.get("SKIPPER_CONFIG"), help="YAML file overriding the defaults")
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1, or SKIPPER_HOST)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default 8000, or SKIPPER_PORT)")
    return parser.parse_args(argv)


def keys_main(argv: list[str]) -> int:
    """`keys new`: print a new API key once, and its entry (appended to `--file` when given)."""
    parser = argparse.ArgumentParser(prog="python -m skipper keys", description="Manage Skipper API keys")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="make a new key; Skipper stores only its SHA-256")
    new.add_argument("--name", required=True, help="who or what uses the key (appears in audit events)")
    new.add_argument("--scopes", required=True, help="comma-separated: read, predict, train, deploy, admin")
    new.add_argument("--file", default=None, help="append the entry to this keys file (auth.keys_file)")
    args = parser.parse_args(argv)

    import yaml

    from skipper.core.apikeys import append_entry, new_key
    from skipper.core.settings import ApiKey

    try:
        key, entry = new_key(args.name, [s.strip() for s in args.scopes.split(",") if s.strip()])
        ApiKey.model_validate(entry)  # the same checks as at start: a bad name fails here, not later
        if args.file:
            append_entry(Path(args.file), entry)
    except (ConfigError, ValueError) as exc:
        print(f"skipper: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    print(f"key: {key}")
    print("(shown once: Skipper keeps only its SHA-256; send it as 'Authorization: Bearer <key>')")
    if args.file:
        print(f"added {args.name!r} to {args.file}")
    else:
        print("add this entry to auth.keys or to the file auth.keys_file names:")
        print(yaml.safe_dump([entry], sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        return keys_main(argv[1:])
    args = parse_args(argv)
    # Imports after argument parsing so `--help` is instant.
    import uvicorn

    from skipper.app.runtime import Runtime
    from skipper.core.httpserver import JsonErrorHttpToolsProtocol
    from skipper.core.logs import configure_logging
    from skipper.core.roles import parse_roles, role_label
    from skipper.core.settings import load_settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        roles = parse_roles(args.role)
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"skipper: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_lines=settings.log_json, role=role_label(roles), fmt=settings.log.format)
    runtime = Runtime(settings, roles)
    try:
        app = runtime.app()  # refuses to expose protected routes without keys
    except ConfigError as exc:
        print(f"skipper: {exc.message}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop", http=JsonErrorHttpToolsProtocol,
        lifespan="on", access_log=False, log_config=None, timeout_graceful_shutdown=30,
        server_header=False,  # no `server: uvicorn` on every response: it tells a scanner, and costs a header check each
    )
    # On SIGINT/SIGTERM the modules stop taking work at once (readiness false), then uvicorn stops
    # accepting, finishes in-flight requests and runs the lifespan shutdown.
    server = runtime.server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())

"""`python -m skipper --role=all|api|trainer|server [--config FILE] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from skipper.core.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m skipper", description="Skipper ML workflow engine")
    parser.add_argument("--role", default=os.environ.get("SKIPPER_ROLE", "all"),
                        help="all (default), api, trainer, server, or a comma-separated combination")
    parser.add_argument("--config", default=os.environ.get("SKIPPER_CONFIG"), help="YAML file overriding the defaults")
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1, or SKIPPER_HOST)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default 8000, or SKIPPER_PORT)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imports after argument parsing so `--help` is instant.
    import uvicorn

    from skipper.core.logs import configure_logging
    from skipper.core.roles import parse_roles, role_label
    from skipper.core.runtime import Runtime
    from skipper.core.settings import load_settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        roles = parse_roles(args.role)
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"skipper: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_lines=settings.log_json, role=role_label(roles))
    runtime = Runtime(settings, roles)
    config = uvicorn.Config(
        runtime.app(), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", access_log=False, log_config=None, timeout_graceful_shutdown=30,
    )
    # On SIGINT/SIGTERM the modules stop taking work at once (readiness false), then uvicorn stops
    # accepting, finishes in-flight requests and runs the lifespan shutdown.
    server = runtime.server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())

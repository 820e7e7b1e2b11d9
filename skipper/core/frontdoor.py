"""The first code every HTTP request meets: one pure-ASGI layer in place of a middleware stack.

For every request, in order: the correlation id (taken from `X-Correlation-ID` or made, set for
logs, echoed on the response), then the `Host` allow-list (400 for a name not served here, the
DNS-rebinding defence). Then a prediction request (`POST` on a route declared with the
`predict` scope) goes straight to its handler; everything else goes through Starlette's own
stack (error middleware, CORS when configured, routing).

Why a shortcut for predictions: at 64 concurrent requests Starlette's layers (two error
middlewares, the router's scan, two send wrappers per layer) cost about as much CPU as the
rest of our request path. The shortcut runs the very handler Starlette would (the same auth,
validation and error steps of `skipper.core.pipeline`), on a path that Starlette would also
route there first, and answers an exception the way Starlette's handlers would.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skipper.core.errors import BadRequest, SkipperError
from skipper.core.logs import correlation_id
from skipper.core.messages import new_id
from skipper.core.routing import ErrorStyle

CORRELATION_HEADER = b"x-correlation-id"
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

Handler = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]
ErrorResponder = Callable[[SkipperError, ErrorStyle], Response]


class HostAllowList:
    """Which `Host` names this process answers to.

    Entries: an exact host name, `*.example.com` for its subdomains, `*` for any host, and
    `loopback` for every loopback address. The port is ignored.
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self._any = "*" in allowed
        self._loopback = "loopback" in allowed
        self._exact = {h.lower() for h in allowed if not h.startswith("*.")}
        self._suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    def allows(self, host: str) -> bool:
        name = host.lower()
        name = name[1:].split("]", 1)[0] if name.startswith("[") else name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if self._any or name in self._exact or (self._suffixes and name.endswith(self._suffixes)):
            return True
        if self._loopback:
            try:
                return ipaddress.ip_address(name).is_loopback
            except ValueError:
                return False
        return False


@dataclass(frozen=True, slots=True)
class HotRoute:
    """A prediction route the front door dispatches itself: `POST` on `path`, answered by `handler`."""

    path: str
    handler: Handler

    def compiled(self) -> tuple[str, re.Pattern[str], Mapping[str, Any]]:
        """(the literal end of the path, the path's regex, its convertors): the end rules most paths out cheaply."""
        regex, _, convertors = compile_path(self.path)  # Starlette's own, so both match the same paths
        return self.path.rsplit("}", 1)[-1], regex, convertors


class FrontDoor:
    """The ASGI app Starlette runs first (see the module docstring).

    Parameters:
      app: Starlette's stack, for every request that is not a prediction.
      hot: the prediction routes.
      hosts: the `Host` allow-list; None answers any host.
      style_for: the error style of a path (the Host refusal is written in it).
      exception_handlers: Starlette's, by exception class; a prediction's exception is answered
        by the same one Starlette would pick (the `Exception` one re-raises after answering, as
        Starlette's server-error middleware does, so uvicorn logs the traceback).
      error_response: writes a `SkipperError` in a style.
      wrap_hot: what wraps the prediction handlers (Starlette's CORS middleware, when configured).
    """

    def __init__(self, app: ASGIApp, *, hot: Sequence[HotRoute], hosts: HostAllowList | None,
                 style_for: Callable[[str], ErrorStyle], exception_handlers: Mapping[Any, ExceptionHandler],
                 error_response: ErrorResponder, wrap_hot: Callable[[ASGIApp], ASGIApp] | None = None) -> None:
        self.app = app
        self._hot = [(*route.compiled(), route.handler) for route in hot]
        self._hosts = hosts
        self._style_for = style_for
        self._handlers: dict[Any, ExceptionHandler] = dict(exception_handlers)
        self._error_response = error_response
        self._hot_app: ASGIApp = wrap_hot(self._predict) if wrap_hot is not None else self._predict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = host = None  # the first of each, as Starlette's `request.headers` reads them
        for name, value in scope["headers"]:
            if name == b"host" and host is None:
                host = value.decode("latin-1")
            elif name == CORRELATION_HEADER and given is None:
                given = value.decode("latin-1")
        host = host or ""
        cid = given if given is not None and _CORRELATION_ID.match(given) else new_id()  # it reaches logs and the database
        scope.setdefault("state", {})["correlation_id"] = cid
        token = correlation_id.set(cid)
        try:
            if self._hosts is not None and not self._hosts.allows(host):
                error = BadRequest(f"host {host[:100]!r} is not served here; see http.allowed_hosts",
                                   details={"host": host[:100]})
                await _echo_id(self._error_response(error, self._style_for(scope["path"])), scope)(scope, receive, send)
            elif scope["method"] == "POST" and not scope.get("root_path") and self._route(scope):
                await self._hot_app(scope, receive, send)
            else:
                await self.app(scope, receive, _with_header(send, (CORRELATION_HEADER, cid.encode("latin-1"))))
        finally:
            correlation_id.reset(token)

    def _route(self, scope: Scope) -> bool:
        path = scope["path"]
        for tail, regex, convertors, handler in self._hot:
            match = regex.match(path) if path.endswith(tail) else None
            if match is not None:
                scope["path_params"] = {k: convertors[k].convert(v) for k, v in match.groupdict().items()}
                scope["skipper.handler"] = handler
                return True
        return False

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await scope["skipper.handler"](request)
        except Exception as exc:
            response = await self._answer(request, exc, send)
        await _echo_id(response, scope)(scope, receive, send)

    async def _answer(self, request: Request, exc: Exception, send: Send) -> Response:
        for cls in type(exc).__mro__:
            if cls is not Exception and cls in self._handlers:
                return await self._handlers[cls](request, exc)
        handler = self._handlers.get(Exception)
        if handler is None:
            raise exc
        await _echo_id(await handler(request, exc), request.scope)(request.scope, request.receive, send)
        raise exc


def _echo_id(response: Response, scope: Scope) -> Response:
    """`response` with the request's correlation id in its headers."""
    response.raw_headers.append((CORRELATION_HEADER, scope["state"]["correlation_id"].encode("latin-1")))
    return response


def _with_header(send: Send, header: tuple[bytes, bytes]) -> Send:
    async def send_with_header(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", []).append(header)
        await send(message)

    return send_with_header

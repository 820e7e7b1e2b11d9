"""The dashboard at `/api/v1/skipper/ui/`: server-rendered pages over the api's service layer.

Workflows (with a train form), tasks (live), a task (live progress and curves), models
(deploy and roll back, the replicas serving each version), predict. Pages are Jinja2;
the only scripts are vendored (htmx with its SSE extension, uPlot) plus `dashboard.js`.
Every action calls `ApiService`, as the JSON routes do. Pages need the `read` scope and
each action its own; the login page is open. Pages are not part of `openapi.json`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from skipper import __version__
from skipper.core.auth import OPEN, Access, Principal, configured_keys
from skipper.core.errors import NotFound, SkipperError, ValidationFailed
from skipper.core.routing import API_BASE, SKIPPER_ERRORS, Call, Endpoint, ErrorStyle, RouteGroup
from skipper.core.settings import Settings
from skipper.modules.api.dashboard.forms import field_errors, read_form, train_fields, train_params
from skipper.modules.api.dashboard.render import environment
from skipper.modules.api.dashboard.session import Sessions
from skipper.modules.api.models import ModelPath, TaskPath, TasksQuery, VersionPath, WorkflowPath
from skipper.modules.api.service import ApiService

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
UI = f"{API_BASE}/ui"
ASSETS = {p.name: p for p in STATIC.iterdir() if p.is_file()}
MEDIA = {".js": "text/javascript", ".css": "text/css", ".md": "text/markdown"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SCOPES: tuple[Access, ...] = ("read", "predict", "train", "deploy", "admin")
NAV = {"workflows.html": "workflows", "tasks.html": "tasks", "task.html": "tasks", "models.html": "models",
       "predict.html": "predict"}


class AssetPath(BaseModel):
    asset: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")


class PredictQuery(BaseModel):
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class LoginQuery(BaseModel):
    next: str | None = Field(None, max_length=512)


def _local(target: str | None) -> str:
    """Where to go after logging in: a dashboard path only (never another site)."""
    if target and target.startswith(UI + "/") and "//" not in target and "\\" not in target:
        return target
    return UI + "/"


class Dashboard:
    """The dashboard's routes; each handler renders a page or calls the service and redirects."""

    def __init__(self, service: ApiService, settings: Settings) -> None:
        self._service = service
        self._settings = settings
        self._env = environment(HERE / "templates")
        self._style = ErrorStyle("html", SKIPPER_ERRORS.render, SKIPPER_ERRORS.schema, respond=self._error)

    @functools.cached_property
    def sessions(self) -> Sessions:
        # Built when the app is (not with the module): a bad keys file is a ConfigError where the CLI reports it.
        return Sessions(self._settings, configured_keys(self._settings), path=API_BASE)

    def routes(self) -> list[RouteGroup]:
        def page(path: str, handler: Any, scope: Any = "read", **kw: Any) -> Endpoint:
            return Endpoint("GET", path, handler, scope=scope, in_schema=False, **kw)

        def action(path: str, handler: Any, scope: Any, **kw: Any) -> Endpoint:
            return Endpoint("POST", path, handler, scope=scope, in_schema=False, content="form", **kw)

        ui = RouteGroup(UI, [
            page("/", self.workflows),
            page("/tasks", self.tasks, query=TasksQuery),
            page("/tasks/rows", self.task_rows, query=TasksQuery),
            page("/tasks/{task_id}", self.task, path_params=TaskPath),
            page("/tasks/{task_id}/summary", self.task_summary, path_params=TaskPath),
            page("/models", self.models),
            page("/predict", self.predict_page, query=PredictQuery),
            page("/login", self.login_page, scope=OPEN, query=LoginQuery),
            page("/static/{asset}", self.asset, scope=OPEN, path_params=AssetPath),
            action("/login", self.log_in, OPEN, query=LoginQuery),
            action("/logout", self.log_out, OPEN),
            action("/workflows/{workflow}/train", self.train, "train", path_params=WorkflowPath),
            action("/tasks/{task_id}/cancel", self.cancel, "train", path_params=TaskPath),
            action("/models/{model}/versions/{version}/deploy", self.deploy, "deploy", path_params=VersionPath),
            action("/models/{model}/predict", self.predict, "predict", path_params=ModelPath),
        ], errors=self._style)
        root = RouteGroup("", [Endpoint("GET", "/", self.root, scope=OPEN, in_schema=False)])
        return [ui, root]

    # --- rendering ------------------------------------------------------------------------

    def render(self, request: Request, template: str, principal: Principal | None, status: int = 200,
               **context: Any) -> HTMLResponse:
        nonce, new = self.sessions.csrf_nonce(request)
        who = principal if principal is not None and self.sessions.enabled else None
        can = {s: principal.allows(s) for s in SCOPES} if principal else dict.fromkeys(SCOPES, False)
        html = self._env.get_template(template).render(
            ui=UI, api=API_BASE, version=__version__, csrf=self.sessions.csrf_token(nonce), who=who, can=can,
            login=self.sessions.enabled, nav=NAV.get(template, ""), **context)
        response = HTMLResponse(html, status_code=status, headers={"content-security-policy": CSP,
                                                                   "x-content-type-options": "nosniff",
                                                                   "cache-control": "no-store"})
        if new:
            self.sessions.set_csrf(response, nonce, request)
        return response

    def _error(self, exc: SkipperError, request: Request) -> Response:
        if exc.status == 401 and request.method == "GET":
            return RedirectResponse(f"{UI}/login?{urlencode({'next': request.url.path})}", status_code=303)
        return self.render(request, "error.html", None, status=exc.status, error=exc)

    async def _checked_form(self, call: Call[Any, Any, Any]) -> dict[str, str]:
        form = await read_form(call.request)
        self.sessions.check_csrf(call.request, form.get("csrf", ""))
        return form

    # --- pages ----------------------------------------------------------------------------

    async def root(self, call: Call[None, None, None]) -> Response:
        return RedirectResponse(UI + "/", status_code=307)

    async def asset(self, call: Call[AssetPath, None, None]) -> Response:
        found = ASSETS.get(call.path.asset)
        if found is None:
            raise NotFound(f"no dashboard asset {call.path.asset!r}", details={"asset": call.path.asset})
        media = MEDIA.get(found.suffix, "text/plain")
        # Vendored files carry their version in the name: cache them for long; our own for a minute.
        age = 86400 * 30 if any(c.isdigit() for c in found.stem) else 60
        return FileResponse(found, media_type=media, headers={"cache-control": f"public, max-age={age}",
                                                              "x-content-type-options": "nosniff"})

    async def workflows(self, call: Call[None, None, None]) -> Response:
        cards = [{"name": n, "workflow": w, "fields": train_fields(w.params), "errors": {}}
                 for n, w in self._service.workflows.items()]
        return self.render(call.request, "workflows.html", call.principal, workflows=cards)

    async def tasks(self, call: Call[None, TasksQuery, None]) -> Response:
        q = call.query
        page = await self._service.tasks(workflow=q.workflow, status=q.status, limit=q.limit, offset=q.offset)
        return self.render(call.request, "tasks.html", call.principal, page=page, query=q,
                           workflows=sorted(self._service.workflows),
                           statuses=["queued", "running", "succeeded", "failed", "cancelled"],
                           rows_url=f"{UI}/tasks/rows?{urlencode(_filters(q))}")

    async def task_rows(self, call: Call[None, TasksQuery, None]) -> Response:
        q = call.query
        page = await self._service.tasks(workflow=q.workflow, status=q.status, limit=q.limit, offset=q.offset)
        return self.render(call.request, "_task_rows.html", call.principal, page=page)

    async def task(self, call: Call[TaskPath, None, None]) -> Response:
        task = await self._service.task(call.path.task_id)
        return self.render(call.request, "task.html", call.principal, task=task,
                           stream=f"{API_BASE}/tasks/{quote(task.task_id)}/stream")

    async def task_summary(self, call: Call[TaskPath, None, None]) -> Response:
        task = await self._service.task(call.path.task_id)
        return self.render(call.request, "_task_summary.html", call.principal, task=task)

    async def models(self, call: Call[None, None, None]) -> Response:
        servers = self._service.servers()
        models = []
        for summary in await self._service.models():
            versions = await self._service.versions(summary["model"])
            served = {v.version: [s for s in servers if s["models"].get(summary["model"]) == v.version] for v in versions}
            models.append({"name": summary["model"], "production": summary["production_version"],
                           "versions": list(reversed(versions)), "served": served})
        known = {m["name"] for m in models}
        missing = [w.model for w in self._service.workflows.values() if w.model not in known]
        return self.render(call.request, "models.html", call.principal, models=models, servers=servers,
                           untrained=sorted(set(missing)))

    async def predict_page(self, call: Call[None, PredictQuery, None]) -> Response:
        return await self._predict_view(call.request, call.principal, call.query.model)

    async def _predict_view(self, request: Request, principal: Principal, model: str | None, *,
                            values: dict[str, str] | None = None, result: dict[str, Any] | None = None,
                            error: SkipperError | None = None, status: int = 200) -> Response:
        models = [m["model"] for m in await self._service.models() if m["production_version"] is not None]
        model = model if model in models else (models[0] if models else None)
        features: list[str] = []
        if model is not None:
            features = await self._service.features(model)
        return self.render(request, "predict.html", principal, status=status, models=models, model=model,
                           features=features, values=values or {}, result=result, error=error)

    async def login_page(self, call: Call[None, LoginQuery, None]) -> Response:
        if not self.sessions.enabled:
            return RedirectResponse(UI + "/", status_code=303)
        return self.render(call.request, "login.html", None, next=_local(call.query.next), failed=None)

    # --- actions --------------------------------------------------------------------------

    async def log_in(self, call: Call[None, LoginQuery, None]) -> Response:
        form = await self._checked_form(call)
        target = _local(form.get("next") or call.query.next)
        if not self.sessions.enabled:
            return RedirectResponse(target, status_code=303)
        try:
            _, cookie = self.sessions.log_in(form.get("key", ""))
        except SkipperError:
            return self.render(call.request, "login.html", None, status=401, next=target,
                               failed="That key is not one this server knows.")
        response = RedirectResponse(target, status_code=303)
        self.sessions.set_session(response, cookie, call.request)
        return response

    async def log_out(self, call: Call[None, None, None]) -> Response:
        await self._checked_form(call)
        response = RedirectResponse(f"{UI}/login" if self.sessions.enabled else UI + "/", status_code=303)
        self.sessions.clear_session(response)
        return response

    async def train(self, call: Call[WorkflowPath, None, None]) -> Response:
        form = await self._checked_form(call)
        name = call.path.workflow
        workflow = self._service.workflow(name)
        params, errors = train_params(form, workflow.params)
        if not errors:
            try:
                task = await self._service.train(name, {"params": params}, actor=call.principal.name,
                                                 correlation_id=call.correlation_id)
            except ValidationFailed as exc:
                errors = field_errors(exc)
            else:
                return RedirectResponse(f"{UI}/tasks/{quote(task.task_id)}", status_code=303)
        cards = [{"name": n, "workflow": w, "fields": train_fields(w.params, form if n == name else None),
                  "errors": errors if n == name else {}} for n, w in self._service.workflows.items()]
        return self.render(call.request, "workflows.html", call.principal, status=422, workflows=cards)

    async def cancel(self, call: Call[TaskPath, None, None]) -> Response:
        await self._checked_form(call)
        await self._service.cancel(call.path.task_id, actor=call.principal.name, correlation_id=call.correlation_id)
        return RedirectResponse(f"{UI}/tasks/{quote(call.path.task_id)}", status_code=303)

    async def deploy(self, call: Call[VersionPath, None, None]) -> Response:
        await self._checked_form(call)
        await self._service.deploy(call.path.model, call.path.version, actor=call.principal.name,
                                   correlation_id=call.correlation_id)
        return RedirectResponse(f"{UI}/models#model-{quote(call.path.model)}", status_code=303)

    async def predict(self, call: Call[ModelPath, None, None]) -> Response:
        form = await self._checked_form(call)
        model = call.path.model
        features = await self._service.features(model)
        values = {f: form.get(f, "").strip() for f in features}
        instance: dict[str, Any] = {}
        for name, raw in values.items():
            try:
                instance[name] = float(raw)
            except ValueError:
                error = ValidationFailed(f"{name}: a number is needed", details={"field": name})
                return await self._predict_view(call.request, call.principal, model, values=values, error=error,
                                                status=422)
        try:
            result = await self._service.predict(model, {"instances": [instance]}, correlation_id=call.correlation_id)
        except SkipperError as exc:
            return await self._predict_view(call.request, call.principal, model, values=values, error=exc,
                                            status=exc.status)
        return await self._predict_view(call.request, call.principal, model, values=values, result=result)


def _filters(q: TasksQuery) -> dict[str, str]:
    return {k: v for k, v in (("workflow", q.workflow), ("status", q.status)) if v}

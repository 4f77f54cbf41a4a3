"""The dashboard: server-rendered pages over the proxy core for a signed-in tenant, mounted at ``/dashboard``.

A sub-application of its own, so that its errors are pages (never the API's JSON, never a trace) and its
responses carry the headers that keep a browser from running anything but our own script: a strict
Content-Security-Policy and no framing. Every page works without JavaScript; ``static/dashboard.js`` only
follows a running job live.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.auth import KeyAuthenticator
from services.common.errors import ClaasError, InvalidArgument, Unauthenticated
from services.proxy.core import ProxyCore
from services.proxy.dashboard import views
from services.proxy.dashboard.session import COOKIE, Session, Sessions
from services.proxy.openai.objects import JobObject
from services.proxy.tenancy import tenant_of
from services.trainer.domain import JobState

log = structlog.get_logger("claas.proxy.dashboard")

HERE = Path(__file__).parent
MOUNT = "/dashboard"
NAME = "dashboard"
SERVER_ERRORS = {
    500: "something went wrong on our side; it has been logged",
    503: "a service the proxy needs (storage, the trainer or the model server) did not answer",
    504: "a service the proxy needs took too long to answer",
}
#: Pages may load only the proxy's own files; nothing may frame them.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def build_dashboard(core: ProxyCore, auth: KeyAuthenticator) -> FastAPI:
    """The dashboard application, to be mounted at ``MOUNT`` under the name ``NAME``."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    settings = core.settings
    app.state.core = core
    app.state.auth = auth
    app.state.sessions = Sessions(settings.dashboard_secret.get_secret_value(), settings.dashboard_session_s)
    app.state.secure_cookie = settings.dashboard_secure_cookie
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _install_error_pages(app)
    for route in (_pages, _adapter_pages, _feedback_pages, _eval_pages):
        route(app)
    app.add_middleware(_SecurityHeaders)
    return app


class _SecurityHeaders:
    """Pure ASGI (the job stream passes through untouched): the security headers on every response, and
    an error page for an unexpected exception (logged with its trace here, shown without it)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", []).extend(self._headers)
            await send(message)

        try:
            await self._app(scope, receive, with_headers)
        except Exception:
            log.exception("dashboard_internal_error", path=scope["path"])
            if started:
                return  # a stream that broke: its client sees it end
            page = _render(Request(scope), "error.html", 500, message=SERVER_ERRORS[500], status=500)
            await page(scope, receive, with_headers)


def _url(request: Request, route: str, /, **params: Any) -> URL:
    """The URL of one of our routes: they are named within the mount, and URLs are made by the whole app."""
    return request.url_for(f"{NAME}:{route}", **params)


@pass_context
def _template_url(context: dict[str, Any], route: str, /, **params: Any) -> URL:
    return _url(context["request"], route, **params)


_env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(("html",)), finalize=views.printable
)
_env.filters.update(short=views.short_name, pretty=views.pretty_json, number=views.number)
_env.globals["url_for"] = _template_url
_templates = Jinja2Templates(env=_env)


def _render(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("session", getattr(request.state, "session", None))
    response = _templates.TemplateResponse(request, template, context, status_code=code)
    response.headers["cache-control"] = "no-store"  # tenant data: never kept by a shared cache
    return response


def _install_error_pages(app: FastAPI) -> None:
    @app.exception_handler(ClaasError)
    async def _claas(request: Request, exc: ClaasError) -> Response:
        if isinstance(exc, Unauthenticated):
            response = _sign_in_page(request, exc.message)
            if request.cookies.get(COOKIE):
                response.delete_cookie(COOKIE, path=MOUNT)  # expired or forged: the browser can drop it
            return response
        log.info("dashboard_error", path=request.url.path, status=exc.http_status, error=exc.message)
        # A client error is about what the person asked for: they read it. A server-side one names our
        # services' addresses and internals: the log has it, the page says what it means for them.
        message = exc.message if exc.http_status < 500 else SERVER_ERRORS.get(exc.http_status, SERVER_ERRORS[500])
        return _render(request, "error.html", exc.http_status, message=message, status=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"invalid request: {where}: {first.get('msg', 'not understood')}"
        return _render(request, "error.html", 400, message=message, status=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return _render(request, "error.html", exc.status_code, message=message, status=exc.status_code)


def _sign_in_page(request: Request, message: str = "", *, status: int = 401) -> Response:
    return _render(request, "sign_in.html", status, message=message, session=None)


def _core(request: Request) -> ProxyCore:
    return request.app.state.core


def _session(request: Request) -> Session:
    sessions: Sessions = request.app.state.sessions
    session = sessions.check(sessions.read(request.cookies.get(COOKIE)), request.app.state.auth)
    request.state.session = session
    return session


Core = Annotated[ProxyCore, Depends(_core)]
Signed = Annotated[Session, Depends(_session)]


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the last value of each): all our forms send."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise InvalidArgument("expected a form (application/x-www-form-urlencoded)")
    fields = parse_qs((await request.body()).decode(errors="replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


def _pages(app: FastAPI) -> None:
    @app.get("/", name="home")
    async def home(request: Request) -> Response:
        _session(request)
        return RedirectResponse(_url(request, "adapters"), status_code=303)

    @app.get("/sign-in", name="sign_in")
    async def sign_in_form(request: Request) -> Response:
        return _sign_in_page(request, status=200)

    @app.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        # The key comes in the body of a POST only: it never appears in a URL, a log line or the cookie.
        key = (await _form(request)).get("api_key", "").strip()
        if not key:
            raise Unauthenticated("enter an API key")
        auth: KeyAuthenticator = request.app.state.auth
        tenant = tenant_of(auth.authenticate(key))
        cookie = request.app.state.sessions.issue(tenant, key)
        response = RedirectResponse(_url(request, "adapters"), status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=request.app.state.sessions.max_age_s,
            path=MOUNT,
            httponly=True,
            samesite="strict",
            secure=request.app.state.secure_cookie,
        )
        log.info("dashboard_sign_in", tenant=tenant)
        return response

    @app.post("/sign-out", name="sign_out")
    async def sign_out(request: Request, session: Signed) -> Response:
        session.check_csrf((await _form(request)).get("csrf"))
        response = RedirectResponse(_url(request, "sign_in"), status_code=303)
        response.delete_cookie(COOKIE, path=MOUNT)
        return response


def _adapter_pages(app: FastAPI) -> None:
    @app.get("/adapters", name="adapters")
    async def adapters(request: Request, core: Core, session: Signed) -> Response:
        return _render(request, "adapters.html", adapters=await core.adapters.list(session.tenant))

    @app.get("/adapters/{name}", name="adapter")
    async def adapter(request: Request, name: str, core: Core, session: Signed, page_token: str = "") -> Response:
        found = await core.adapters.get(session.tenant, name)
        versions, next_token = await core.adapters.versions(session.tenant, name, page_token=page_token)
        records, _ = await core.feedback.records(session.tenant, adapter=name, page_size=100)
        by_job = {r.job_id: r for r in records if r.job_id}
        rows = [(v, by_job.get(v.lineage.job_id), views.step_chart(v.lineage.metrics)) for v in versions]
        return _render(request, "adapter.html", adapter=found, rows=rows, next_token=next_token)

    @app.post("/adapters/{name}/rollback", name="rollback")
    async def rollback(request: Request, name: str, core: Core, session: Signed) -> Response:
        form = await _form(request)
        session.check_csrf(form.get("csrf"))
        try:
            version = int(form.get("version", ""))
        except ValueError:
            raise InvalidArgument("the version to roll back to is not a number", param="version") from None
        await core.adapters.rollback(session.tenant, name, version)
        return RedirectResponse(_url(request, "adapter", name=name), status_code=303)


def _feedback_pages(app: FastAPI) -> None:
    @app.get("/feedback", name="feedback")
    async def feedback(
        request: Request,
        core: Core,
        session: Signed,
        adapter: str = "",
        state: str = "",
        page_token: str = "",
        page_size: int = 20,
    ) -> Response:
        records, next_token = await core.feedback.records(
            session.tenant, adapter=adapter, state=_state(state), page_size=page_size, page_token=page_token
        )
        query = {"adapter": adapter, "state": state, "page_size": page_size}
        return _render(
            request,
            "feedback.html",
            records=records,
            next_token=next_token,
            query=query,
            states=[s.value for s in JobState],
        )

    @app.get("/jobs/{job_id}", name="job")
    async def job(request: Request, job_id: str, core: Core, session: Signed) -> Response:
        events = core.feedback.watch(session.tenant, job_id)
        try:
            current = await anext(events)
        finally:
            await events.aclose()
        return _render(request, "job.html", job=current)

    @app.get("/jobs/{job_id}/events", name="job_events")
    async def job_events(job_id: str, core: Core, session: Signed) -> StreamingResponse:
        """Server-sent events of the job's watch stream: one ``job`` event per state (the API's job
        object), then ``end``. An unknown job or another tenant's is a 404 before the stream starts."""
        events = core.feedback.watch(session.tenant, job_id)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        return StreamingResponse(
            _job_stream(first, events),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )


async def _job_stream(first: Any, events: AsyncIterator[Any]) -> AsyncIterator[str]:
    try:
        yield f"event: job\ndata: {JobObject.of(first).model_dump_json()}\n\n"
        async for status in events:
            yield f"event: job\ndata: {JobObject.of(status).model_dump_json()}\n\n"
    except ClaasError as exc:
        log.warning("dashboard_job_stream_failed", error=exc.message)
        yield f"event: failure\ndata: {json.dumps({'message': exc.message})}\n\n"
    finally:
        await events.aclose()
    yield "event: end\ndata: {}\n\n"


def _state(value: str) -> JobState | None:
    if not value:
        return None
    try:
        return JobState(value)
    except ValueError:
        raise InvalidArgument(f"unknown state {value!r}", param="state") from None


def _eval_pages(app: FastAPI) -> None:
    @app.get("/evals", name="evals")
    async def evals(request: Request, core: Core, session: Signed) -> Response:
        return _render(request, "evals.html", runs=await core.evals.list(session.tenant))

    @app.get("/evals/{run_id}", name="eval_run")
    async def eval_run(request: Request, run_id: str, core: Core, session: Signed) -> Response:
        return _render(request, "eval_run.html", run=await core.evals.get(session.tenant, run_id))

    @app.get("/evals/{run_id}/plots/{plot}", name="eval_plot")
    async def eval_plot(run_id: str, plot: str, core: Core, session: Signed) -> Response:
        data = await core.evals.plot(session.tenant, run_id, plot)
        return Response(data, media_type="image/png", headers={"cache-control": "private, max-age=300"})

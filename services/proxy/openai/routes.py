"""The OpenAI-compatible HTTP surface, its feedback/adapters twins and the eval-run upload: thin routes over
the proxy core. The dashboard (``services/proxy/dashboard``) is mounted beside them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from services.common.auth import Authenticator, KeyAuthenticator, bearer_from_header
from services.common.errors import ClaasError, InvalidArgument, NotFound
from services.common.naming import vllm_lora_name
from services.proxy import convert
from services.proxy.core import ProxyCore
from services.proxy.dashboard import routes as dashboard
from services.proxy.domain import ChatResult, Delta, Started
from services.proxy.openai import protocol as p
from services.proxy.openai import text as t
from services.proxy.openai.archive import zip_stream
from services.proxy.openai.errors import RequestGate, install_error_handlers, sse_error
from services.proxy.openai.objects import (
    AdapterObject,
    FeedbackRecordObject,
    JobObject,
    VersionObject,
    state_name,
    state_of,
)
from services.proxy.tenancy import tenant_of
from services.trainer.domain import JobState

log = structlog.get_logger("claas.proxy.http")

ERRORS = {status: {"model": p.ErrorResponse} for status in (400, 401, 404, 413, 503)}


def build_app(core: ProxyCore, auth: KeyAuthenticator, *, serving: Callable[[], bool]) -> FastAPI:
    # The schema is served behind an API key like every route, and Prometheus reads the metrics port
    # (CLAAS_METRICS_PORT), not this public one: neither tells a stranger what runs here.
    app = FastAPI(title="CLaaS proxy", version="1", docs_url=None, redoc_url=None, openapi_url=None, responses=ERRORS)
    app.state.core = core
    app.state.auth = auth
    install_error_handlers(app)
    app.add_middleware(
        RequestGate,
        max_body_bytes=core.settings.max_request_bytes,
        larger={EVALS_PREFIX: core.settings.eval_max_file_bytes},
    )
    for router in (openai_router, feedback_router, adapters_router, evals_router):
        app.include_router(router)
    app.mount(dashboard.MOUNT, dashboard.build_dashboard(core, auth), name=dashboard.NAME)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        ok = serving()
        return Response(b"serving\n" if ok else b"not serving\n", status_code=200 if ok else 503)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_: Tenant) -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


def _core(request: Request) -> ProxyCore:
    return request.app.state.core


async def _tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """Every public route needs an API key; the key names the caller's tenant."""
    auth: Authenticator = request.app.state.auth
    return tenant_of(auth.authenticate(bearer_from_header(authorization)))


Core = Annotated[ProxyCore, Depends(_core)]
Tenant = Annotated[str, Depends(_tenant)]

openai_router = APIRouter(prefix="/v1")


@openai_router.post("/chat/completions", response_model=p.ChatCompletion)
async def chat_completions(
    body: p.ChatCompletionRequest, core: Core, tenant: Tenant
) -> p.ChatCompletion | StreamingResponse:
    request = body.to_core()
    if not body.stream:
        return p.ChatCompletion.of(await core.router.chat(tenant, request))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _streaming(core.router.chat_stream(tenant, request), _ChatChunks(include_usage))


@openai_router.post("/completions", response_model=t.TextCompletion)
async def completions(
    body: t.CompletionCreateRequest, core: Core, tenant: Tenant
) -> t.TextCompletion | StreamingResponse:
    """OpenAI's legacy text completions: the prompt goes to the model as it is (no chat template). Recorded
    as a rollout like a chat, so ``/v1/feedback`` takes its id."""
    request = body.to_core()
    if not body.stream:
        return t.TextCompletion.of(await core.router.complete(tenant, request))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _streaming(core.router.complete_stream(tenant, request), _TextChunks(include_usage))


@openai_router.post("/score", response_model=t.ScoreResponse)
async def score(body: t.ScoreBody, core: Core, tenant: Tenant) -> t.ScoreResponse:
    """Teacher-forced log-probs of ``completion`` as the assistant's answer to ``messages``, under the base
    model or an adapter version (the head unless ``version``). A read: nothing is recorded."""
    return t.ScoreResponse.of(await core.router.score(tenant, body.to_core()))


@openai_router.get("/models", response_model=p.ModelList)
async def list_models(core: Core, tenant: Tenant) -> p.ModelList:
    return p.ModelList(data=[p.ModelCard.of(m) for m in await core.models(tenant)])


@openai_router.get("/models/{model:path}", response_model=p.ModelCard)
async def get_model(model: str, core: Core, tenant: Tenant) -> p.ModelCard:
    for info in await core.models(tenant):
        if model in (info.id, f"{tenant}/{model}"):
            return p.ModelCard.of(info)
    raise NotFound(f"model '{model}' not found", param="model")


class _ChatChunks:
    """Server-sent events of a streamed chat, in OpenAI's ``chat.completion.chunk`` shape."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def first(self, started: Started) -> str | None:
        return self._chunk(started, p.ChunkChoice(delta=p.Delta(role="assistant", content="")))

    def delta(self, started: Started, delta: Delta) -> str:
        logprobs = p.ChoiceLogprobs.of(delta.logprobs) if delta.logprobs else None
        return self._chunk(started, p.ChunkChoice(delta=p.Delta(content=delta.text), logprobs=logprobs))

    def last(self, started: Started, result: ChatResult) -> list[str]:
        events = [self._chunk(started, p.ChunkChoice(delta=p.Delta(), finish_reason=result.finish_reason))]
        if self.include_usage:
            events.append(self._chunk(started, None, p.Usage.of(result)))
        return events

    def _chunk(self, started: Started, choice: p.ChunkChoice | None, usage: p.Usage | None = None) -> str:
        body = p.ChatCompletionChunk(
            id=started.completion_id,
            choices=[choice] if choice else [],
            created=started.created,
            model=started.model,
            usage=usage,
            adapter=started.adapter or None,
            adapter_version=started.version,
        )
        return f"data: {body.model_dump_json(exclude_none=True)}\n\n"


class _TextChunks:
    """Server-sent events of a streamed text completion (``text_completion`` objects, as OpenAI sends)."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self._offset = 0  # characters streamed so far: the legacy logprobs' text_offset counts from the start

    def first(self, started: Started) -> str | None:
        return None

    def delta(self, started: Started, delta: Delta) -> str:
        logprobs = t.LegacyLogprobs.of(delta.logprobs, self._offset) if delta.logprobs else None
        self._offset += sum(len(item.token) for item in delta.logprobs)
        return self._chunk(started, t.CompletionChoice(text=delta.text, logprobs=logprobs))

    def last(self, started: Started, result: ChatResult) -> list[str]:
        events = [self._chunk(started, t.CompletionChoice(text="", finish_reason=result.finish_reason))]
        if self.include_usage:
            events.append(self._chunk(started, None, p.Usage.of(result)))
        return events

    def _chunk(self, started: Started, choice: t.CompletionChoice | None, usage: p.Usage | None = None) -> str:
        body = t.TextCompletion(
            id=started.completion_id,
            choices=[choice] if choice else [],
            created=started.created,
            model=started.model,
            usage=usage,
            adapter=started.adapter or None,
            adapter_version=started.version,
        )
        return f"data: {body.model_dump_json(exclude_none=True)}\n\n"


_Chunks = _ChatChunks | _TextChunks


async def _streaming(events: AsyncIterator[object], chunks: _Chunks) -> StreamingResponse:
    try:
        started = await anext(events)  # failures before the first byte keep their HTTP status
    except BaseException:
        await events.aclose()
        raise
    assert isinstance(started, Started)
    return StreamingResponse(
        _sse(started, events, chunks),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _sse(started: Started, events: AsyncIterator[object], chunks: _Chunks) -> AsyncIterator[str]:
    try:
        first = chunks.first(started)
        if first:
            yield first
        async for event in events:
            if isinstance(event, Delta):
                yield chunks.delta(started, event)
            elif isinstance(event, ChatResult):
                # The rollout is written by now: the answer is complete and can take feedback.
                for line in chunks.last(started, event):
                    yield line
    except ClaasError as exc:
        log.warning("stream_failed", error=exc.message)
        yield sse_error(exc)
    except Exception as exc:
        log.exception("stream_failed")
        yield sse_error(ClaasError(f"internal error: {type(exc).__name__}"))
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"


feedback_router = APIRouter(prefix="/v1/feedback")


@feedback_router.post("", response_model=p.JobResponse)
async def submit_feedback(body: p.FeedbackRequest, core: Core, tenant: Tenant) -> p.JobResponse:
    convert.config_to_proto(body.config)  # a bad config is refused before anything is looked up
    job = await core.feedback.submit(
        tenant,
        body.completion_ids,
        body.feedback,
        body.config,
        wait=body.wait,
        idempotency_key=body.idempotency_key,
    )
    return p.JobResponse(job=JobObject.of(job))


@feedback_router.get("", response_model=p.FeedbackListResponse)
async def list_feedback(
    core: Core, tenant: Tenant, adapter: str = "", state: str = "", page_size: int = 0, page_token: str = ""
) -> p.FeedbackListResponse:
    """The caller's feedback records (the audit log), newest first."""
    records, token = await core.feedback.records(
        tenant, adapter=adapter, state=_job_state(state), page_size=page_size, page_token=page_token
    )
    return p.FeedbackListResponse(records=[FeedbackRecordObject.of(r) for r in records], next_page_token=token or None)


def _job_state(name: str) -> JobState | None:
    if not name:
        return None
    try:
        return state_of(name)
    except KeyError:
        names = ", ".join(state_name(s) for s in JobState)
        raise InvalidArgument(f"unknown state {name!r}: one of {names}", param="state") from None


@feedback_router.get("/jobs/{job_id}", response_model=p.JobResponse)
async def get_job(job_id: str, core: Core, tenant: Tenant) -> p.JobResponse:
    """The job's current state (the first event of gRPC Feedback.Watch)."""
    events = core.feedback.watch(tenant, job_id)
    try:
        return p.JobResponse(job=JobObject.of(await anext(events)))
    finally:
        await events.aclose()


# Names may be "adapter" or "tenant/adapter": the routes with a suffix come first, so that the catch-all
# {name:path} does not swallow ".../versions".
adapters_router = APIRouter(prefix="/v1/adapters")


@adapters_router.post("", response_model=p.AdapterResponse)
async def create_adapter(body: p.AdapterCreateRequest, core: Core, tenant: Tenant) -> p.AdapterResponse:
    adapter = await core.adapters.create(tenant, body.name, convert.lora_from_json(body.lora))
    return p.AdapterResponse(adapter=AdapterObject.of(adapter))


@adapters_router.get("", response_model=p.AdapterListResponse)
async def list_adapters(core: Core, tenant: Tenant) -> p.AdapterListResponse:
    return p.AdapterListResponse(adapters=[AdapterObject.of(a) for a in await core.adapters.list(tenant)])


@adapters_router.get("/{name:path}/versions", response_model=p.VersionListResponse)
async def list_versions(
    name: str, core: Core, tenant: Tenant, page_size: int = 0, page_token: str = ""
) -> p.VersionListResponse:
    versions, token = await core.adapters.versions(tenant, name, page_size=page_size, page_token=page_token)
    return p.VersionListResponse(versions=[VersionObject.of(v) for v in versions], next_page_token=token or None)


@adapters_router.post("/{name:path}/rollback", response_model=p.AdapterResponse)
async def rollback_adapter(name: str, body: p.RollbackRequest, core: Core, tenant: Tenant) -> p.AdapterResponse:
    return p.AdapterResponse(adapter=AdapterObject.of(await core.adapters.rollback(tenant, name, body.version)))


@adapters_router.get(
    "/{name:path}/export", response_class=Response, responses={200: {"content": {"application/zip": {}}}}
)
async def export_adapter(name: str, core: Core, tenant: Tenant, version: int = 0) -> StreamingResponse:
    """The version's PEFT files (0 = head) as a zip archive; never the optimizer state. The version is
    verified before the first byte goes out; the archive is then built as it is sent."""
    header, chunks = await core.adapters.export(tenant, name, version)
    filename = f"{vllm_lora_name(header.name, header.version)}.zip"
    return StreamingResponse(
        zip_stream(header.files, chunks, header.created_at),
        media_type="application/zip",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@adapters_router.get("/{name:path}", response_model=p.AdapterResponse)
async def get_adapter(name: str, core: Core, tenant: Tenant) -> p.AdapterResponse:
    return p.AdapterResponse(adapter=AdapterObject.of(await core.adapters.get(tenant, name)))


@adapters_router.delete("/{name:path}", response_model=p.DeleteResponse)
async def delete_adapter(name: str, core: Core, tenant: Tenant) -> p.DeleteResponse:
    return p.DeleteResponse(deleted=await core.adapters.delete(tenant, name))


EVALS_PREFIX = "/v1/evals/"
evals_router = APIRouter(prefix=EVALS_PREFIX.rstrip("/"))


@evals_router.put("/{run_id}/{name}", response_model=p.EvalFileResponse)
async def publish_eval_file(run_id: str, name: str, request: Request, core: Core, tenant: Tenant) -> p.EvalFileResponse:
    """One file of a `claas eval` run (the raw bytes of summary.json, a PNG plot, ...), kept under the
    caller's tenant for the dashboard; the same file again replaces it."""
    data = await request.body()
    await core.evals.publish(tenant, run_id, name, data)
    return p.EvalFileResponse(run_id=run_id, name=name, bytes=len(data))


@evals_router.delete("/{run_id}", response_model=p.DeleteResponse)
async def delete_eval_run(run_id: str, core: Core, tenant: Tenant) -> p.DeleteResponse:
    """A published run, every file of it."""
    return p.DeleteResponse(deleted=await core.evals.delete(tenant, run_id))

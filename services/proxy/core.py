"""The proxy's core: inference, feedback and adapters over storage, trainer and vLLM, plus the background
work that keeps it honest (vLLM health, head changes, rollout retention). Both transports — the gRPC
servicers and the OpenAI HTTP routes — call this and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Protocol

import structlog
from prometheus_client import Gauge

from services.common.errors import ClaasError
from services.common.objectstore import ObjectStore
from services.common.peers import PeerSet
from services.proxy.adapters import AdapterFactory, Adapters, AdapterSource
from services.proxy.audit import AuditLog
from services.proxy.domain import ModelInfo
from services.proxy.evals import EvalRuns
from services.proxy.feedback import Feedback, JobRunner
from services.proxy.gate import EngineGate
from services.proxy.inference import Inference
from services.proxy.limits import ChatLimits
from services.proxy.loras import LoraManager
from services.proxy.rollouts import RolloutStore
from services.proxy.routing import Peers, Router
from services.proxy.scoring import Scoring
from services.proxy.settings import ProxySettings
from services.proxy.vllm import VllmClient
from services.storage.domain import HeadEvent, Version

log = structlog.get_logger("claas.proxy")

VLLM_UP = Gauge("claas_proxy_vllm_up", "1 while vLLM answers its health check.")


class ServingSource(AdapterSource, Protocol):
    """What serving needs of storage: the adapters, their version files, and the changes of their heads."""

    async def download_version(self, name: str, version: int, dest: Path) -> Version: ...

    async def get_version(self, name: str, version: int = 0) -> Version: ...

    def watch_heads(self, prefix: str = "", *, send_initial: bool = True) -> AsyncIterator[HeadEvent]: ...


class TrainingBackend(JobRunner, AdapterFactory, Protocol):
    """What the proxy needs of the trainer: jobs run and adapters initialised."""


#: Told whether vLLM is up, each time that changes.
HealthListener = Callable[[bool], Awaitable[None]]


async def _ignore(up: bool) -> None:
    pass


class ProxyCore:
    """The one core behind both transports: ``inference``, ``scoring``, ``feedback``, ``adapters`` and ``evals``
    for the calls, ``models`` for the model list, and the background work (``start``/``stop``): vLLM's health,
    preloading new heads of adapters in use, sweeping expired rollouts. Made inside the running event loop."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        storage: ServingSource,
        trainer: TrainingBackend,
        vllm: VllmClient,
        store: ObjectStore,
        peers: Peers | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.vllm = vllm
        self.rollouts = RolloutStore(
            store, cache_size=settings.rollout_cache_size, retention_days=settings.rollout_retention_days
        )
        self.audit = AuditLog(store, retention_days=settings.rollout_retention_days)
        self.evals = EvalRuns(
            store,
            folder=settings.eval_runs_dir,
            max_file_bytes=settings.eval_max_file_bytes,
            max_runs=settings.max_eval_runs_per_tenant,
        )
        self.loras = LoraManager(vllm, self._fetch, settings.adapter_dir, settings.max_loaded_adapters)
        limits = ChatLimits(
            default_max_tokens=settings.default_max_tokens,
            max_tokens_cap=settings.max_tokens_cap,
            max_messages=settings.max_messages,
            max_request_bytes=settings.max_request_bytes,
        )
        self.gate = EngineGate(enabled=settings.exclusive_scoring)
        self.inference = Inference(
            storage=storage,
            loras=self.loras,
            vllm=vllm,
            rollouts=self.rollouts,
            limits=limits,
            base_model=settings.base_model,
            gate=self.gate,
        )
        self.scoring = Scoring(
            inference=self.inference,
            storage=storage,
            loras=self.loras,
            vllm=vllm,
            limits=limits,
            gate=self.gate,
            base_model=settings.base_model,
        )
        # ``peers`` (the other replicas' client) is given when calls are routed by adapter.
        replicas = PeerSet(settings.proxy_peers, refresh_s=settings.peers_refresh_s) if peers is not None else None
        self.router = Router(
            inference=self.inference,
            scoring=self.scoring,
            loras=self.loras,
            base_model=settings.base_model,
            replicas=replicas,
            self_addr=settings.proxy_peer_addr.strip(),
            peers=peers,
            spill_in_flight=settings.spill_in_flight,
        )
        self.feedback = Feedback(
            rollouts=self.rollouts,
            audit=self.audit,
            trainer=trainer,
            storage=storage,
            serving=self.router,
            max_feedback_chars=settings.max_feedback_chars,
            max_completions=settings.max_feedback_completions,
            wait_timeout_s=settings.feedback_wait_timeout_s,
        )
        self.adapters = Adapters(
            storage=storage,
            trainer=trainer,
            loras=self.loras,
            serving=self.router,
            audit=self.audit,
            max_per_tenant=settings.max_adapters_per_tenant,
            max_exports=settings.max_parallel_exports,
        )
        self.vllm_up = False
        self._on_health: HealthListener = _ignore
        self._tasks: list[asyncio.Task] = []

    async def models(self, tenant: str) -> list[ModelInfo]:
        """What the caller can chat with: the base model, then its adapters that have a version."""
        models = [ModelInfo(id=self.settings.base_model, created=0, owned_by="claas")]
        for adapter in await self.adapters.list(tenant):
            if adapter.head_version > 0:
                created = int(adapter.created_at.timestamp())
                models.append(ModelInfo(adapter.name, created, tenant, adapter.head_version))
        return models

    async def start(self, on_health: HealthListener) -> None:
        """Probe vLLM once (so health is right from the start), then keep doing the background work."""
        self._on_health = on_health
        await self.check_vllm()
        await self.router.start()
        loops = [self._probe_loop(), self._sweep_loop()]
        if self.settings.watch_heads:
            loops.append(self._watch_loop())
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.router.stop()

    async def _fetch(self, adapter: str, version: int, dest: Path) -> None:
        await self.storage.download_version(adapter, version, dest)

    async def check_vllm(self) -> bool:
        """Probe vLLM's health now; tell the listener when it changed."""
        up = await self.vllm.healthy()
        if up == self.vllm_up:
            return up
        if up:
            # A vLLM that comes (back) up knows none of the adapters loaded into an earlier run.
            self.loras.invalidate_all()
        self.vllm_up = up
        VLLM_UP.set(int(up))
        log.info("vllm_health", up=up, url=self.vllm.base_url)
        await self._on_health(up)
        return up

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.vllm_health_interval_s)
            await self.check_vllm()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.rollouts.sweep()
                await self.audit.sweep()
            except ClaasError as exc:
                log.warning("rollout_sweep_failed", error=exc.message)
            await asyncio.sleep(self.settings.rollout_sweep_interval_s)

    async def _watch_loop(self) -> None:
        """Follow head changes from storage; reconnect with back-off when storage goes away."""
        backoff = 1.0
        while True:
            named: set[str] = set()
            try:
                async for event in self.storage.watch_heads("", send_initial=True):
                    backoff = 1.0
                    if event.synced:
                        await self._forget_missing(named)
                    else:
                        named.add(event.name)
                        await self._on_head(event)
            except ClaasError as exc:
                log.warning("watch_heads_lost", error=exc.message, retry_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _forget_missing(self, existing: set[str]) -> None:
        """After (re)connecting: an adapter in use that storage no longer has was deleted while this replica
        was not watching; its weights must not be served again."""
        for adapter in self.loras.tracked():
            if adapter not in existing:
                log.info("adapter_gone_while_unwatched", adapter=adapter)
                await self.loras.forget(adapter)

    async def _on_head(self, event: HeadEvent) -> None:
        if event.deleted:
            await self.loras.forget(event.name)
        elif event.head > 0 and self.loras.tracks(event.name) and self.router.owns(event.name):
            # Only the owner preloads: another replica that served the adapter while the owner was away or
            # busy lets its copy age out rather than load every new version too.
            try:
                await self.loras.preload(event.name, event.head, event.generation)
            except ClaasError as exc:
                log.warning("prefetch_failed", adapter=event.name, version=event.head, error=exc.message)

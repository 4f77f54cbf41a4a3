"""The grpc.aio server bootstrap every service uses.

Health (SERVING only once the service says it is ready), reflection, size limits, the shared
interceptor, a Prometheus endpoint, and graceful shutdown on SIGTERM/SIGINT: stop accepting, let
in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common.auth import Authenticator
from services.common.files import write_atomically
from services.common.interceptors import ServerInterceptor
from services.common.logs import configure_logging
from services.common.settings import CommonSettings, load_settings

log = structlog.get_logger("claas.server")

Registrar = Callable[[grpc.aio.Server], None]


class ServiceServer:
    """A gRPC server hosting one or more services of a CLaaS role.

    ``service_names`` are the full names (e.g. ``claas.v1.TeacherService``) that health and reflection
    report; ``register`` adds the servicers to the server.
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        service_names: Sequence[str],
        register: Registrar,
        authenticator: Authenticator,
    ) -> None:
        self.settings = settings
        self.service_names = list(service_names)
        self._register = register
        self._authenticator = authenticator
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def _build(self) -> grpc.aio.Server:
        # Built inside the running event loop: a grpc.aio server binds to the loop it is created in.
        limit = self.settings.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            interceptors=[ServerInterceptor(self._authenticator)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # A fixed receive window: an upload waiting for its turn holds that window in memory, not
                # its whole file (a window grown with the bandwidth took a 20 MB file in before it was read).
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self._register(server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection([*self.service_names, health_name, reflection.SERVICE_NAME], server)
        return server

    async def start(self) -> int:
        """Bind and start; every service reports NOT_SERVING until ``set_serving(True)``."""
        self.server = self._build()
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address}")
        await self.set_serving(False)
        await self.server.start()
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.host)
        log.info("listening", host=self.settings.host, port=self.port, services=self.service_names)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self) -> None:
        """Refuse new calls at once; in-flight ones get the grace period."""
        await self.set_serving(False)
        if self.server is not None:
            await self.server.stop(self.settings.grace_period_s)


async def run_server(
    server: ServiceServer,
    *,
    ready: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start, run ``ready`` (e.g. load the model), report SERVING, and serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await server.start()
    try:
        if ready is not None:
            await ready()
        await server.set_serving(True)
        if server.settings.port_file is not None:
            write_atomically(server.settings.port_file, str(port))
        log.info("serving", port=port)
        await stop.wait()
        log.info("stopping", grace_s=server.settings.grace_period_s)
    finally:
        await server.stop()
        if on_stop is not None:
            await on_stop()
        log.info("stopped")


Built = tuple[ServiceServer, Callable[[], Awaitable[None]] | None, Callable[[], Awaitable[None]] | None]


def serve_main(settings_cls: type[CommonSettings], build: Callable[[CommonSettings], Built]) -> None:
    """The body of every role's ``__main__``: settings from the environment, logging, serve until SIGTERM."""
    settings = load_settings(settings_cls)
    configure_logging(settings.log_format, settings.log_level)
    server, ready, on_stop = build(settings)
    asyncio.run(run_server(server, ready=ready, on_stop=on_stop))


@contextlib.asynccontextmanager
async def serving(built: Built) -> AsyncIterator[ServiceServer]:
    """Run a role in this process (tests, benchmarks): started, ready and SERVING inside the block."""
    server, ready, on_stop = built
    await server.start()
    try:
        if ready is not None:
            await ready()
        await server.set_serving(True)
        yield server
    finally:
        await server.stop()
        if on_stop is not None:
            await on_stop()

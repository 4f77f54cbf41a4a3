"""How the CLI reaches the proxy: address and API key from flags, environment, or the local stack file."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from services.common.errors import (
    Aborted,
    ClaasError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.common.settings import default_data_dir
from services.proxy.client import ProxyClient

T = TypeVar("T")

#: Hints printed with a failed call, by error: what the user can do about it.
HINTS: dict[type[ClaasError], str] = {
    Unauthenticated: "pass --api-key or set CLAAS_API_KEY (for a local stack it is in stack.json)",
    Unavailable: "is the stack running? start it with `claas up`; `claas status` shows each service",
    NotFound: "`claas adapters list` shows your adapters",
    InvalidArgument: "check the arguments; `claas <command> --help` lists them",
    Aborted: "someone changed the adapter at the same time; run the command again",
}


def hint(error: ClaasError) -> str:
    """What the user can do about ``error`` (a subclass takes its base's hint)."""
    return next((text for kind, text in HINTS.items() if isinstance(error, kind)), "")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proxy", default=None, help="proxy gRPC address (env CLAAS_PROXY_ADDR; default: local stack)")
    parser.add_argument("--api-key", default=None, help="API key (env CLAAS_API_KEY; default: local stack's key)")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir() / "stack", help="local stack folder")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a call gives up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True)
class Connection:
    """Where the proxy is, the API key to call it with, and the deadline of each call."""

    target: str
    api_key: str
    timeout: float

    def session(self) -> ProxySession:
        return ProxySession(self)


class ProxySession:
    """The proxy's async client for synchronous commands: one event loop and one channel for every call
    made through it (``session(lambda client: client.adapters.list())``). Close it, or use ``with``."""

    def __init__(self, conn: Connection) -> None:
        self._runner = asyncio.Runner()
        # A grpc.aio channel belongs to the loop it was made in: make it inside the runner's loop.
        self.client = self._runner.run(self._connect(conn))

    @staticmethod
    async def _connect(conn: Connection) -> ProxyClient:
        return ProxyClient.connect(conn.target, token=conn.api_key, timeout_s=conn.timeout)

    def __call__(self, call: Callable[[ProxyClient], Awaitable[T]]) -> T:
        return self._runner.run(call(self.client))

    def close(self) -> None:
        try:
            self._runner.run(self.client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> ProxySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connection(args: argparse.Namespace) -> Connection:
    """Flags first, then environment, then the local stack's stack.json."""
    target = args.proxy or os.environ.get("CLAAS_PROXY_ADDR")
    key = args.api_key or os.environ.get("CLAAS_API_KEY")
    if not target or not key:
        from services.cli.stack import read_stack_file

        try:
            info = read_stack_file(args.data_dir)
        except FileNotFoundError:
            info = {"addresses": {"proxy": "127.0.0.1:50050"}, "api_key": ""}
        target = target or info["addresses"]["proxy"]
        key = key or info["api_key"]
    return Connection(target=target, api_key=key, timeout=args.timeout)

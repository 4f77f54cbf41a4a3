"""How the CLI reaches the proxy: address and API key from flags, environment, or the local stack file."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.settings import default_data_dir

#: Hints printed with a failed call, by status code: what the user can do about it.
HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: "pass --api-key or set CLAAS_API_KEY (for a local stack it is in stack.json)",
    grpc.StatusCode.UNAVAILABLE: "is the stack running? start it with `claas up`; `claas status` shows each service",
    grpc.StatusCode.NOT_FOUND: "`claas adapters list` shows your adapters",
    grpc.StatusCode.INVALID_ARGUMENT: "check the arguments; `claas <command> --help` lists them",
    grpc.StatusCode.ABORTED: "someone changed the adapter at the same time; run the command again",
}


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proxy", default=None, help="proxy gRPC address (env CLAAS_PROXY_ADDR; default: local stack)")
    parser.add_argument("--api-key", default=None, help="API key (env CLAAS_API_KEY; default: local stack's key)")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir() / "stack", help="local stack folder")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a call gives up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True)
class Connection:
    target: str
    api_key: str
    timeout: float

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)


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

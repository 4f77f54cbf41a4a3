"""`claas up` (start the whole system here) and `claas status`."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from services.cli.output import emit, fail
from services.cli.stack import ROLES, Stack, StackConfig, StackError, grpc_health, read_stack_file
from services.common.settings import default_data_dir


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=default_data_dir() / "stack", help="store, logs, keys")
    parser.add_argument(
        "--port-base", type=int, default=50050, help="proxy gRPC port; storage, teacher, trainer +1..+3"
    )
    parser.add_argument("--http-port", type=int, default=8000, help="the proxy's OpenAI-compatible HTTP port")
    parser.add_argument("--vllm-port", type=int, default=8001)
    parser.add_argument("--model", default="smollm2-135m", help="built-in name, Hugging Face id or local path")
    parser.add_argument(
        "--store", default="", help="adapter store: a folder (default: under --data-dir) or s3://bucket (CLAAS_S3_*)"
    )
    parser.add_argument("--device", default="cpu", help="torch device of the teacher and the trainer")


def stack_config(args: argparse.Namespace) -> StackConfig:
    served = args.model if args.model == "smollm2-135m" else Path(args.model).name
    return StackConfig(
        data_dir=args.data_dir,
        port_base=args.port_base,
        http_port=args.http_port,
        vllm_port=args.vllm_port,
        base_model=args.model,
        served_name=served,
        store_url=args.store,
        device=args.device,
    )


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start storage, teacher, trainer, vLLM and the proxy on this machine")
    add_stack_arguments(up)
    up.set_defaults(func=_up)
    status = sub.add_parser("status", help="health of each service of the local stack")
    status.add_argument("--data-dir", type=Path, default=default_data_dir() / "stack")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


def _print_event(role: str, what: str) -> None:
    print(f"  {role:<8} {what}", flush=True)


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(stack_config(args), on_event=_print_event)
    print(f"starting the stack (logs in {stack.config.data_dir / 'logs'})", flush=True)
    try:
        stack.up()
    except StackError as exc:
        stack.down()
        return fail(str(exc), hint="fix the cause shown above, then run `claas up` again")
    except BaseException:
        stack.down()
        raise
    info = read_stack_file(stack.config.data_dir)
    print(
        "ready:\n"
        f"  gRPC (proxy)   {info['addresses']['proxy']}\n"
        f"  OpenAI HTTP    {info['http_url']}/v1\n"
        f"  API key        {info['api_key']}   (tenant '{info['tenant']}')\n"
        f"  stack file     {stack.config.data_dir / 'stack.json'}\n"
        "Ctrl-C stops everything.",
        flush=True,
    )
    try:
        while not stop.wait(timeout=1.0):
            stack.restart_exited()
    except StackError as exc:
        stack.down()
        return fail(str(exc), hint="the log above says why it keeps failing")
    print("stopping", flush=True)
    stack.down()
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        info = read_stack_file(args.data_dir)
    except FileNotFoundError as exc:
        return fail(str(exc))
    health = {role: grpc_health(addr) for role, addr in info["addresses"].items()}
    ordered = {role: health[role] for role in ROLES if role in health}
    human = "\n".join(f"{role:<8} {state}" for role, state in ordered.items())
    emit({"services": ordered, **{k: info[k] for k in ("http_url", "vllm_url")}}, as_json=args.json, human=human)
    return 0 if all(s == "SERVING" for s in ordered.values()) else 3

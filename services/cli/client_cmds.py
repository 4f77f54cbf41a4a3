"""Everyday commands against the proxy over gRPC: chat, feedback, adapters."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.cli.connection import ProxySession, add_connection_arguments, connection, hint
from services.cli.output import emit, fail
from services.common.domain import LoraSpec, Message
from services.common.errors import ClaasError, DataLoss
from services.proxy.client import ProxyClient
from services.proxy.domain import ChatRequest, ChatResult, Sampling
from services.proxy.openai.objects import AdapterObject, JobObject, VersionObject
from services.storage.domain import Adapter, Version
from services.trainer.domain import JobState


def register(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser("chat", help="one chat turn with an adapter or the base model")
    chat.add_argument("message")
    chat.add_argument("--model", default="smollm2-135m", help="adapter name or the base model")
    chat.add_argument("--system", default=None, help="system message")
    chat.add_argument("--max-tokens", type=int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--stream", action="store_true", help="print text as it is generated")
    add_connection_arguments(chat)
    chat.set_defaults(func=_guard(_chat))

    feedback = sub.add_parser("feedback", help="turn feedback on a completion into a new adapter version")
    feedback.add_argument("completion_id", nargs="+", help="one or more completion ids of the same adapter")
    feedback.add_argument("text", help="the feedback, e.g. 'be more concise'")
    feedback.add_argument("--wait", action="store_true", help="return when the new version is served")
    feedback.add_argument("--steps", type=int, default=None, help="SDPO steps (trainer default if unset)")
    feedback.add_argument("--lr", type=float, default=None, help="learning rate (trainer default if unset)")
    add_connection_arguments(feedback)
    feedback.set_defaults(func=_guard(_feedback))

    adapters = sub.add_parser("adapters", help="create, list, inspect, roll back, delete, export adapters")
    verbs = adapters.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create")
    create.add_argument("name")
    create.add_argument("--rank", type=int, default=0, help="LoRA rank (trainer default if 0)")
    create.add_argument("--alpha", type=int, default=0, help="LoRA alpha (2 x rank if 0)")
    listing = verbs.add_parser("list")
    versions = verbs.add_parser("versions")
    versions.add_argument("name")
    rollback = verbs.add_parser("rollback")
    rollback.add_argument("name")
    rollback.add_argument("version", type=int)
    delete = verbs.add_parser("delete")
    delete.add_argument("name")
    export = verbs.add_parser("export", help="the PEFT files of a version")
    export.add_argument("name")
    export.add_argument("--version", type=int, default=0, help="0 = head")
    export.add_argument("--out", type=Path, required=True, help="folder to write the files to")
    for verb, func in ((create, _create), (listing, _list), (versions, _versions), (rollback, _rollback),
                       (delete, _delete), (export, _export)):  # fmt: skip
        add_connection_arguments(verb)
        verb.set_defaults(func=_guard(func))


def _guard(func: Callable[[argparse.Namespace, ProxySession], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command in a session with the proxy; a failed call becomes a message, a hint and a non-zero
    exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            with connection(args).session() as session:
                return func(args, session)
        except ClaasError as exc:
            return fail(f"{exc.grpc_code.name}: {exc.message}", hint=hint(exc))

    return run


def chat_json(reply: ChatResult) -> dict[str, Any]:
    """A chat answer as ``--json`` prints it (the fields of the gRPC ChatResponse)."""
    return {
        "completion_id": reply.completion_id,
        "text": reply.text,
        "adapter": reply.adapter,
        "version": reply.version,
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
        "finish_reason": reply.finish_reason,
    }


def _chat(args: argparse.Namespace, session: ProxySession) -> int:
    messages = [Message("system", args.system)] if args.system else []
    messages.append(Message("user", args.message))
    request = ChatRequest(
        args.model, tuple(messages), Sampling(max_tokens=args.max_tokens, temperature=args.temperature)
    )

    async def streamed(client: ProxyClient) -> ChatResult:
        reply = None
        async for event in client.inference.chat_stream(request):
            if isinstance(event, ChatResult):
                reply = event
            elif not args.json:
                print(event, end="", flush=True)
        if not args.json:
            print()
        if reply is None:
            raise DataLoss("the proxy ended the stream without the answer")
        return reply

    reply = session(streamed) if args.stream else session(lambda client: client.inference.chat(request))
    served = f"{reply.adapter} v{reply.version}" if reply.adapter else "base model"
    trailer = f"-- completion {reply.completion_id} ({served})"
    # A streamed answer is already on screen: only the trailer remains.
    emit(chat_json(reply), as_json=args.json, human=trailer if args.stream else f"{reply.text}\n{trailer}")
    return 0


def _feedback(args: argparse.Namespace, session: ProxySession) -> int:
    overrides = {"steps": args.steps, "learning_rate": args.lr}
    config = {name: value for name, value in overrides.items() if value is not None}
    job = session(lambda client: client.feedback.submit(args.completion_id, args.text, config, wait=args.wait))
    human = f"job {job.job_id}: {job.state.value}"
    if job.new_version:
        human += f" -> {job.adapter} v{job.new_version}"
    if job.error:
        human += f" ({job.error})"
    emit(JobObject.of(job).model_dump(mode="json"), as_json=args.json, human=human)
    return 1 if job.state in (JobState.FAILED, JobState.CANCELLED) else 0


def _adapter_json(adapter: Adapter) -> dict[str, Any]:
    return AdapterObject.of(adapter).model_dump(mode="json")


def _adapter_line(adapter: Adapter) -> str:
    tags = ", ".join(f"{k}=v{v}" for k, v in sorted(adapter.tags.items()))
    return f"{adapter.name}  head v{adapter.head_version}  rank {adapter.lora.rank}" + (f"  [{tags}]" if tags else "")


def _create(args: argparse.Namespace, session: ProxySession) -> int:
    lora = LoraSpec(rank=args.rank, alpha=args.alpha)
    adapter = session(lambda client: client.adapters.create(args.name, lora))
    emit(_adapter_json(adapter), as_json=args.json, human=f"created {_adapter_line(adapter)}")
    return 0


def _list(args: argparse.Namespace, session: ProxySession) -> int:
    adapters = session(lambda client: client.adapters.list())
    human = "\n".join(_adapter_line(a) for a in adapters) or "no adapters yet (`claas adapters create NAME`)"
    emit({"adapters": [_adapter_json(a) for a in adapters]}, as_json=args.json, human=human)
    return 0


def _versions(args: argparse.Namespace, session: ProxySession) -> int:
    versions = session(lambda client: client.adapters.versions(args.name))
    lines = []
    for v in versions:
        feedback = "; ".join(v.lineage.feedback) or v.lineage.extra.get("source", "")
        kept_off = "  [kept off the head by the commit guard]" if v.lineage.extra.get("guard") == "rejected" else ""
        lines.append(f"v{v.version}  parent v{v.parent_version}  {feedback}{kept_off}")
    as_json = {"versions": [VersionObject.of(v).model_dump(mode="json") for v in versions]}
    emit(as_json, as_json=args.json, human="\n".join(lines))
    return 0


def _rollback(args: argparse.Namespace, session: ProxySession) -> int:
    adapter = session(lambda client: client.adapters.rollback(args.name, args.version))
    emit(_adapter_json(adapter), as_json=args.json, human=f"rolled back: {_adapter_line(adapter)}")
    return 0


def _delete(args: argparse.Namespace, session: ProxySession) -> int:
    deleted = session(lambda client: client.adapters.delete(args.name))
    emit({"deleted": deleted}, as_json=args.json, human="deleted" if deleted else "nothing to delete")
    return 0


class ExportError(Exception):
    """An export that arrived incomplete or corrupted; nothing was written."""


def export_version(session: ProxySession, name: str, version: int, out: Path) -> Version:
    """Download a version's PEFT files into ``out``, each checked by SHA-256 before anything is written."""
    try:
        header, files = session(lambda client: client.adapters.export(name, version))
    except DataLoss as exc:
        raise ExportError(f"{exc.message}, nothing written") from None
    out.mkdir(parents=True, exist_ok=True)
    for entry in header.files:
        (out / Path(entry.path).name).write_bytes(files[entry.path])
    return header


def _export(args: argparse.Namespace, session: ProxySession) -> int:
    try:
        header = export_version(session, args.name, args.version, args.out)
    except ExportError as exc:
        return fail(str(exc), hint="run the export again")
    files = [f.path for f in header.files]
    human = f"v{header.version}: {', '.join(files)} -> {args.out}"
    emit({"version": header.version, "files": files, "out": str(args.out)}, as_json=args.json, human=human)
    return 0

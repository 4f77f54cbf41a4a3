"""Everyday commands against the proxy over gRPC: chat, feedback, adapters."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from pathlib import Path

import grpc
from claas.v1 import common_pb2, proxy_pb2, proxy_pb2_grpc
from claas.v1.storage_pb2 import Version
from google.protobuf.json_format import MessageToDict

from services.cli.connection import HINTS, Connection, add_connection_arguments, connection
from services.cli.output import emit, fail


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


def _guard(func: Callable[[argparse.Namespace, Connection], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; a failed call becomes a message, a hint and a non-zero exit code."""

    def run(args: argparse.Namespace) -> int:
        conn = connection(args)
        try:
            return func(args, conn)
        except grpc.RpcError as exc:
            code = exc.code()
            return fail(f"{code.name}: {exc.details()}", hint=HINTS.get(code, ""))

    return run


def _as_dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def _chat(args: argparse.Namespace, conn: Connection) -> int:
    messages = [common_pb2.ChatMessage(role="system", content=args.system)] if args.system else []
    messages.append(common_pb2.ChatMessage(role="user", content=args.message))
    sampling = proxy_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    with conn.channel() as channel:
        stub = proxy_pb2_grpc.InferenceServiceStub(channel)
        if args.stream:
            request = proxy_pb2.ChatStreamRequest(model=args.model, messages=messages, sampling=sampling)
            reply = None
            for event in stub.ChatStream(request, metadata=conn.metadata, timeout=conn.timeout):
                if event.HasField("final"):
                    reply = event.final
                elif not args.json:
                    print(event.delta, end="", flush=True)
            if not args.json:
                print()
        else:
            request = proxy_pb2.ChatRequest(model=args.model, messages=messages, sampling=sampling)
            reply = stub.Chat(request, metadata=conn.metadata, timeout=conn.timeout)
    served = f"{reply.adapter} v{reply.version}" if reply.adapter else "base model"
    trailer = f"-- completion {reply.completion_id} ({served})"
    # A streamed answer is already on screen: only the trailer remains.
    emit(_as_dict(reply), as_json=args.json, human=trailer if args.stream else f"{reply.text}\n{trailer}")
    return 0


def _feedback(args: argparse.Namespace, conn: Connection) -> int:
    config = common_pb2.SdpoConfig()
    if args.steps is not None:
        config.steps = args.steps
    if args.lr is not None:
        config.learning_rate = args.lr
    request = proxy_pb2.FeedbackServiceSubmitRequest(
        completion_ids=args.completion_id, feedback=args.text, config=config, wait=args.wait
    )
    with conn.channel() as channel:
        reply = proxy_pb2_grpc.FeedbackServiceStub(channel).Submit(
            request, metadata=conn.metadata, timeout=conn.timeout
        )
    job = reply.job
    state = common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    human = f"job {job.job_id}: {state}"
    if job.new_version:
        human += f" -> {job.adapter} v{job.new_version}"
    if job.error:
        human += f" ({job.error})"
    emit(_as_dict(job), as_json=args.json, human=human)
    return 1 if job.state in (common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED) else 0


def _adapters(conn: Connection) -> proxy_pb2_grpc.AdaptersServiceStub:
    return proxy_pb2_grpc.AdaptersServiceStub(conn.channel())


def _adapter_line(adapter) -> str:
    tags = ", ".join(f"{k}=v{v}" for k, v in sorted(adapter.tags.items()))
    return f"{adapter.name}  head v{adapter.head_version}  rank {adapter.lora.rank}" + (f"  [{tags}]" if tags else "")


def _create(args: argparse.Namespace, conn: Connection) -> int:
    lora = common_pb2.LoraSpec(rank=args.rank, alpha=args.alpha)
    reply = _adapters(conn).Create(
        proxy_pb2.AdaptersServiceCreateRequest(name=args.name, lora=lora), metadata=conn.metadata, timeout=conn.timeout
    )
    emit(_as_dict(reply.adapter), as_json=args.json, human=f"created {_adapter_line(reply.adapter)}")
    return 0


def _list(args: argparse.Namespace, conn: Connection) -> int:
    reply = _adapters(conn).List(proxy_pb2.AdaptersServiceListRequest(), metadata=conn.metadata, timeout=conn.timeout)
    human = "\n".join(_adapter_line(a) for a in reply.adapters) or "no adapters yet (`claas adapters create NAME`)"
    emit({"adapters": [_as_dict(a) for a in reply.adapters]}, as_json=args.json, human=human)
    return 0


def _versions(args: argparse.Namespace, conn: Connection) -> int:
    reply = _adapters(conn).Versions(
        proxy_pb2.AdaptersServiceVersionsRequest(name=args.name), metadata=conn.metadata, timeout=conn.timeout
    )
    lines = []
    for v in reply.versions:
        feedback = "; ".join(v.lineage.feedback) or v.lineage.extra.get("source", "")
        lines.append(f"v{v.version}  parent v{v.parent_version}  {feedback}")
    emit({"versions": [_as_dict(v) for v in reply.versions]}, as_json=args.json, human="\n".join(lines))
    return 0


def _rollback(args: argparse.Namespace, conn: Connection) -> int:
    reply = _adapters(conn).Rollback(
        proxy_pb2.AdaptersServiceRollbackRequest(name=args.name, version=args.version),
        metadata=conn.metadata,
        timeout=conn.timeout,
    )
    emit(_as_dict(reply.adapter), as_json=args.json, human=f"rolled back: {_adapter_line(reply.adapter)}")
    return 0


def _delete(args: argparse.Namespace, conn: Connection) -> int:
    reply = _adapters(conn).Delete(
        proxy_pb2.AdaptersServiceDeleteRequest(name=args.name), metadata=conn.metadata, timeout=conn.timeout
    )
    emit({"deleted": reply.deleted}, as_json=args.json, human="deleted" if reply.deleted else "nothing to delete")
    return 0


class ExportError(Exception):
    """An export that arrived incomplete or corrupted; nothing was written."""


def export_version(conn: Connection, name: str, version: int, out: Path) -> Version:
    """Download a version's PEFT files into ``out``, each checked by SHA-256 before anything is written."""
    request = proxy_pb2.AdaptersServiceExportRequest(name=name, version=version)
    header, contents = None, {}
    for part in _adapters(conn).Export(request, metadata=conn.metadata, timeout=conn.timeout):
        if part.HasField("header"):
            header = part.header
        else:
            contents.setdefault(part.chunk.path, bytearray()).extend(part.chunk.data)
    if header is None:
        raise ExportError("the proxy sent no version header")
    for entry in header.files:
        if hashlib.sha256(bytes(contents.get(entry.path, b""))).hexdigest() != entry.sha256:
            raise ExportError(f"{entry.path}: checksum mismatch, nothing written")
    out.mkdir(parents=True, exist_ok=True)
    for entry in header.files:
        (out / Path(entry.path).name).write_bytes(bytes(contents[entry.path]))
    return header


def _export(args: argparse.Namespace, conn: Connection) -> int:
    try:
        header = export_version(conn, args.name, args.version, args.out)
    except ExportError as exc:
        return fail(str(exc), hint="run the export again")
    files = [f.path for f in header.files]
    human = f"v{header.version}: {', '.join(files)} -> {args.out}"
    emit({"version": header.version, "files": files, "out": str(args.out)}, as_json=args.json, human=human)
    return 0

"""Proto messages <-> the core's chat types, and contract messages as JSON for the HTTP surface."""

from __future__ import annotations

from typing import Any

from claas.v1 import common_pb2, proxy_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from services.common.errors import InvalidArgument
from services.proxy.types import ChatRequest, ChatResult, Message, Sampling


def chat_request(request: proxy_pb2.ChatRequest | proxy_pb2.ChatStreamRequest) -> ChatRequest:
    sampling = request.sampling
    return ChatRequest(
        model=request.model,
        messages=tuple(Message(role=m.role, content=m.content) for m in request.messages),
        sampling=Sampling(
            max_tokens=sampling.max_tokens or None,
            temperature=sampling.temperature if sampling.HasField("temperature") else None,
            top_p=sampling.top_p if sampling.HasField("top_p") else None,
            seed=sampling.seed if sampling.HasField("seed") else None,
            stop=tuple(sampling.stop),
        ),
        strip_thinking=request.strip_thinking,
    )


def chat_response(result: ChatResult) -> proxy_pb2.ChatResponse:
    return proxy_pb2.ChatResponse(
        completion_id=result.completion_id,
        text=result.text,
        adapter=result.adapter,
        version=result.version,
        usage=proxy_pb2.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        finish_reason=result.finish_reason,
    )


def to_json(message: ProtoMessage) -> dict[str, Any]:
    """A contract message as plain JSON: .proto field names, every field present, 64-bit integers as
    numbers (not the strings of protobuf's JSON mapping), enums by name, timestamps as RFC 3339."""
    return {field.name: _field(field, getattr(message, field.name)) for field in message.DESCRIPTOR.fields}


def _field(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        inner = field.message_type.fields_by_name["value"]
        return {key: _single(inner, item) for key, item in value.items()}
    if field.is_repeated:
        return [_single(field, item) for item in value]
    return _single(field, value)


def _single(field: FieldDescriptor, value: Any) -> Any:
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return float(f"{value:.7g}")  # float32: no digits it does not hold
    if field.message_type is None:
        return value
    if field.message_type.full_name == "google.protobuf.Timestamp":
        return value.ToJsonString() if value.seconds or value.nanos else None
    return to_json(value)


def sdpo_config(body: dict[str, Any] | None) -> common_pb2.SdpoConfig | None:
    """SDPO overrides from JSON (field names as in common.proto); unknown names are refused."""
    if not body:
        return None
    try:
        return json_format.ParseDict(body, common_pb2.SdpoConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"invalid config: {exc}", param="config") from None


def lora_spec(body: dict[str, Any] | None) -> common_pb2.LoraSpec | None:
    if not body:
        return None
    try:
        return json_format.ParseDict(body, common_pb2.LoraSpec())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"invalid lora: {exc}", param="lora") from None

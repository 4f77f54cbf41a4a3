from claas.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerSampling(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "stop")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class PeerChat(_message.Message):
    __slots__ = ("model", "messages", "sampling", "strip_thinking", "top_logprobs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STRIP_THINKING_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    sampling: PeerSampling
    strip_thinking: bool
    top_logprobs: int
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[PeerSampling, _Mapping]] = ..., strip_thinking: _Optional[bool] = ..., top_logprobs: _Optional[int] = ...) -> None: ...

class PeerCompletion(_message.Message):
    __slots__ = ("model", "prompt", "sampling", "logprobs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    sampling: PeerSampling
    logprobs: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[PeerSampling, _Mapping]] = ..., logprobs: _Optional[int] = ...) -> None: ...

class PeerScore(_message.Message):
    __slots__ = ("model", "messages", "completion", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    completion: str
    version: int
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., completion: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PeerPreload(_message.Message):
    __slots__ = ("adapter", "version", "generation")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    generation: int
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class ProxyPeerServiceServeRequest(_message.Message):
    __slots__ = ("tenant", "stream", "may_refuse", "chat", "completion", "score", "preload")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MAY_REFUSE_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRELOAD_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    stream: bool
    may_refuse: bool
    chat: PeerChat
    completion: PeerCompletion
    score: PeerScore
    preload: PeerPreload
    def __init__(self, tenant: _Optional[str] = ..., stream: _Optional[bool] = ..., may_refuse: _Optional[bool] = ..., chat: _Optional[_Union[PeerChat, _Mapping]] = ..., completion: _Optional[_Union[PeerCompletion, _Mapping]] = ..., score: _Optional[_Union[PeerScore, _Mapping]] = ..., preload: _Optional[_Union[PeerPreload, _Mapping]] = ...) -> None: ...

class PeerTopLogprob(_message.Message):
    __slots__ = ("token", "logprob", "utf8")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    UTF8_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    utf8: bytes
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., utf8: _Optional[bytes] = ...) -> None: ...

class PeerTokenLogprob(_message.Message):
    __slots__ = ("token", "logprob", "utf8", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    UTF8_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    utf8: bytes
    top: _containers.RepeatedCompositeFieldContainer[PeerTopLogprob]
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., utf8: _Optional[bytes] = ..., top: _Optional[_Iterable[_Union[PeerTopLogprob, _Mapping]]] = ...) -> None: ...

class PeerBusy(_message.Message):
    __slots__ = ("in_flight",)
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    def __init__(self, in_flight: _Optional[int] = ...) -> None: ...

class PeerStarted(_message.Message):
    __slots__ = ("completion_id", "model", "adapter", "version", "created")
    COMPLETION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    completion_id: str
    model: str
    adapter: str
    version: int
    created: int
    def __init__(self, completion_id: _Optional[str] = ..., model: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., created: _Optional[int] = ...) -> None: ...

class PeerDelta(_message.Message):
    __slots__ = ("text", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    logprobs: _containers.RepeatedCompositeFieldContainer[PeerTokenLogprob]
    def __init__(self, text: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[PeerTokenLogprob, _Mapping]]] = ...) -> None: ...

class PeerResult(_message.Message):
    __slots__ = ("completion_id", "model", "text", "adapter", "version", "prompt_tokens", "completion_tokens", "finish_reason", "created", "has_logprobs", "logprobs")
    COMPLETION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    HAS_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    completion_id: str
    model: str
    text: str
    adapter: str
    version: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    created: int
    has_logprobs: bool
    logprobs: _containers.RepeatedCompositeFieldContainer[PeerTokenLogprob]
    def __init__(self, completion_id: _Optional[str] = ..., model: _Optional[str] = ..., text: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., created: _Optional[int] = ..., has_logprobs: _Optional[bool] = ..., logprobs: _Optional[_Iterable[_Union[PeerTokenLogprob, _Mapping]]] = ...) -> None: ...

class PeerScoreResult(_message.Message):
    __slots__ = ("model", "adapter", "version", "tokens", "token_ids", "logprobs", "prompt_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    version: int
    tokens: _containers.RepeatedScalarFieldContainer[str]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    prompt_tokens: int
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., tokens: _Optional[_Iterable[str]] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class PeerPreloaded(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProxyPeerServiceServeResponse(_message.Message):
    __slots__ = ("busy", "started", "delta", "result", "score", "preloaded")
    BUSY_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRELOADED_FIELD_NUMBER: _ClassVar[int]
    busy: PeerBusy
    started: PeerStarted
    delta: PeerDelta
    result: PeerResult
    score: PeerScoreResult
    preloaded: PeerPreloaded
    def __init__(self, busy: _Optional[_Union[PeerBusy, _Mapping]] = ..., started: _Optional[_Union[PeerStarted, _Mapping]] = ..., delta: _Optional[_Union[PeerDelta, _Mapping]] = ..., result: _Optional[_Union[PeerResult, _Mapping]] = ..., score: _Optional[_Union[PeerScoreResult, _Mapping]] = ..., preloaded: _Optional[_Union[PeerPreloaded, _Mapping]] = ...) -> None: ...

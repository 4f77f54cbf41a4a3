from claas.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreItem(_message.Message):
    __slots__ = ("messages", "feedback", "response_ids", "support_ids", "support_k", "neutral_followup")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_IDS_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_IDS_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_K_FIELD_NUMBER: _ClassVar[int]
    NEUTRAL_FOLLOWUP_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    feedback: str
    response_ids: _containers.RepeatedScalarFieldContainer[int]
    support_ids: _containers.RepeatedScalarFieldContainer[int]
    support_k: int
    neutral_followup: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., feedback: _Optional[str] = ..., response_ids: _Optional[_Iterable[int]] = ..., support_ids: _Optional[_Iterable[int]] = ..., support_k: _Optional[int] = ..., neutral_followup: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("items", "top_k", "mode", "adapter", "trust_region_mu", "template")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TRUST_REGION_MU_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    top_k: int
    mode: _common_pb2.TeacherMode
    adapter: _common_pb2.AdapterRef
    trust_region_mu: float
    template: str
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., top_k: _Optional[int] = ..., mode: _Optional[_Union[_common_pb2.TeacherMode, str]] = ..., adapter: _Optional[_Union[_common_pb2.AdapterRef, _Mapping]] = ..., trust_region_mu: _Optional[float] = ..., template: _Optional[str] = ...) -> None: ...

class TokenDistributions(_message.Message):
    __slots__ = ("k", "ids", "logprobs", "sampled_logprobs", "tail_logprobs")
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TAIL_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    k: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    sampled_logprobs: _containers.RepeatedScalarFieldContainer[float]
    tail_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, k: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., sampled_logprobs: _Optional[_Iterable[float]] = ..., tail_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("teacher", "neutral", "teacher_prompt", "prompt_tokens")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    NEUTRAL_FIELD_NUMBER: _ClassVar[int]
    TEACHER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    teacher: TokenDistributions
    neutral: TokenDistributions
    teacher_prompt: str
    prompt_tokens: int
    def __init__(self, teacher: _Optional[_Union[TokenDistributions, _Mapping]] = ..., neutral: _Optional[_Union[TokenDistributions, _Mapping]] = ..., teacher_prompt: _Optional[str] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ...) -> None: ...

class TeacherServiceInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TeacherServiceInfoResponse(_message.Message):
    __slots__ = ("model_id", "tokenizer_fingerprint", "backend", "max_top_k", "vocab_size", "max_context")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    tokenizer_fingerprint: str
    backend: str
    max_top_k: int
    vocab_size: int
    max_context: int
    def __init__(self, model_id: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., backend: _Optional[str] = ..., max_top_k: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ...) -> None: ...

from claas.v1 import common_pb2 as _common_pb2
from claas.v1 import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InitAdapterRequest(_message.Message):
    __slots__ = ("name", "lora")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    name: str
    lora: _common_pb2.LoraSpec
    def __init__(self, name: _Optional[str] = ..., lora: _Optional[_Union[_common_pb2.LoraSpec, _Mapping]] = ...) -> None: ...

class InitAdapterResponse(_message.Message):
    __slots__ = ("adapter", "version")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    adapter: _storage_pb2.Adapter
    version: _storage_pb2.Version
    def __init__(self, adapter: _Optional[_Union[_storage_pb2.Adapter, _Mapping]] = ..., version: _Optional[_Union[_storage_pb2.Version, _Mapping]] = ...) -> None: ...

class TrainSample(_message.Message):
    __slots__ = ("completion_id", "messages", "prompt_ids", "response_ids", "sampled_logprobs", "feedback", "served_version")
    COMPLETION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    completion_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    response_ids: _containers.RepeatedScalarFieldContainer[int]
    sampled_logprobs: _containers.RepeatedScalarFieldContainer[float]
    feedback: str
    served_version: int
    def __init__(self, completion_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., response_ids: _Optional[_Iterable[int]] = ..., sampled_logprobs: _Optional[_Iterable[float]] = ..., feedback: _Optional[str] = ..., served_version: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("adapter", "samples", "config", "idempotency_key")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    samples: _containers.RepeatedCompositeFieldContainer[TrainSample]
    config: _common_pb2.SdpoConfig
    idempotency_key: str
    def __init__(self, adapter: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[TrainSample, _Mapping]]] = ..., config: _Optional[_Union[_common_pb2.SdpoConfig, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class TrainerServiceInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainerServiceInfoResponse(_message.Message):
    __slots__ = ("model_id", "tokenizer_fingerprint", "device", "queue_depth", "max_queue", "max_lora_rank")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    tokenizer_fingerprint: str
    device: str
    queue_depth: int
    max_queue: int
    max_lora_rank: int
    def __init__(self, model_id: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., device: _Optional[str] = ..., queue_depth: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_lora_rank: _Optional[int] = ...) -> None: ...

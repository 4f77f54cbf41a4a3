from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TeacherMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEACHER_MODE_UNSPECIFIED: _ClassVar[TeacherMode]
    TEACHER_MODE_BASE: _ClassVar[TeacherMode]
    TEACHER_MODE_SELF: _ClassVar[TeacherMode]
    TEACHER_MODE_TRUST_REGION: _ClassVar[TeacherMode]
    TEACHER_MODE_REMOTE: _ClassVar[TeacherMode]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_SCORING: _ClassVar[JobState]
    JOB_STATE_TRAINING: _ClassVar[JobState]
    JOB_STATE_COMMITTING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
TEACHER_MODE_UNSPECIFIED: TeacherMode
TEACHER_MODE_BASE: TeacherMode
TEACHER_MODE_SELF: TeacherMode
TEACHER_MODE_TRUST_REGION: TeacherMode
TEACHER_MODE_REMOTE: TeacherMode
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_SCORING: JobState
JOB_STATE_TRAINING: JobState
JOB_STATE_COMMITTING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class AdapterRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("rank", "alpha", "target_modules", "dropout")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    dropout: float
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., dropout: _Optional[float] = ...) -> None: ...

class SdpoConfig(_message.Message):
    __slots__ = ("loss", "alpha", "top_k", "support", "learning_rate", "beta1", "beta2", "weight_decay", "steps", "is_clip", "max_grad_norm", "kl_coef", "clip_epsilon", "teacher_mode", "trust_region_mu", "contrastive", "neutral_followup", "template", "guided_rollouts", "guided_max_tokens", "greedy_max_tokens")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    IS_CLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    KL_COEF_FIELD_NUMBER: _ClassVar[int]
    CLIP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TEACHER_MODE_FIELD_NUMBER: _ClassVar[int]
    TRUST_REGION_MU_FIELD_NUMBER: _ClassVar[int]
    CONTRASTIVE_FIELD_NUMBER: _ClassVar[int]
    NEUTRAL_FOLLOWUP_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    GUIDED_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    GUIDED_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GREEDY_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    loss: str
    alpha: float
    top_k: int
    support: str
    learning_rate: float
    beta1: float
    beta2: float
    weight_decay: float
    steps: int
    is_clip: float
    max_grad_norm: float
    kl_coef: float
    clip_epsilon: float
    teacher_mode: TeacherMode
    trust_region_mu: float
    contrastive: bool
    neutral_followup: str
    template: str
    guided_rollouts: int
    guided_max_tokens: int
    greedy_max_tokens: int
    def __init__(self, loss: _Optional[str] = ..., alpha: _Optional[float] = ..., top_k: _Optional[int] = ..., support: _Optional[str] = ..., learning_rate: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., weight_decay: _Optional[float] = ..., steps: _Optional[int] = ..., is_clip: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., kl_coef: _Optional[float] = ..., clip_epsilon: _Optional[float] = ..., teacher_mode: _Optional[_Union[TeacherMode, str]] = ..., trust_region_mu: _Optional[float] = ..., contrastive: _Optional[bool] = ..., neutral_followup: _Optional[str] = ..., template: _Optional[str] = ..., guided_rollouts: _Optional[int] = ..., guided_max_tokens: _Optional[int] = ..., greedy_max_tokens: _Optional[int] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "offset", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    data: bytes
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("step", "loss", "distill_loss", "kl", "mean_is_ratio", "clip_fraction", "grad_norm", "tokens", "teacher_student_gap")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    DISTILL_LOSS_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    MEAN_IS_RATIO_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_STUDENT_GAP_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    distill_loss: float
    kl: float
    mean_is_ratio: float
    clip_fraction: float
    grad_norm: float
    tokens: int
    teacher_student_gap: float
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., distill_loss: _Optional[float] = ..., kl: _Optional[float] = ..., mean_is_ratio: _Optional[float] = ..., clip_fraction: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens: _Optional[int] = ..., teacher_student_gap: _Optional[float] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("job_id", "completion_ids", "feedback", "metrics", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_IDS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    completion_ids: _containers.RepeatedScalarFieldContainer[str]
    feedback: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.RepeatedCompositeFieldContainer[StepMetrics]
    extra: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., completion_ids: _Optional[_Iterable[str]] = ..., feedback: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Iterable[_Union[StepMetrics, _Mapping]]] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "adapter", "state", "base_version", "new_version", "step", "total_steps", "metrics", "error", "merged_job_ids", "teacher_texts")
    class TeacherTextsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MERGED_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_TEXTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    adapter: str
    state: JobState
    base_version: int
    new_version: int
    step: int
    total_steps: int
    metrics: _containers.RepeatedCompositeFieldContainer[StepMetrics]
    error: str
    merged_job_ids: _containers.RepeatedScalarFieldContainer[str]
    teacher_texts: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., adapter: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., base_version: _Optional[int] = ..., new_version: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[StepMetrics, _Mapping]]] = ..., error: _Optional[str] = ..., merged_job_ids: _Optional[_Iterable[str]] = ..., teacher_texts: _Optional[_Mapping[str, str]] = ...) -> None: ...

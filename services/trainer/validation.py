"""The trainer's checks, as pure functions: requests (names, samples, SDPO overrides, LoRA shapes) and the
teacher's answers. Each raises one of ``services.common.errors`` with the offending ``param``; none does I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from services.common.domain import LoraSpec
from services.common.errors import ClaasError, FailedPrecondition, InvalidArgument
from services.common.naming import check_version
from services.storage.domain import Adapter
from services.teacher.domain import ScoreResult, TeacherInfo, TokenDistributions
from services.trainer.config import ConfigError, SdpoConfig
from services.trainer.domain import Sample, Targets
from services.trainer.settings import TrainerSettings

#: The roles a sample's conversation may hold (what the teacher's chat template renders).
ROLES = ("system", "user", "assistant")
#: The longest idempotency key (the proxy's derived keys are 43 characters).
MAX_IDEMPOTENCY_KEY = 256


def check_idempotency_key(key: str) -> None:
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument(
            f"idempotency_key has {len(key)} characters, at most {MAX_IDEMPOTENCY_KEY} allowed", param="idempotency_key"
        )


def check_tokenizers(model_id: str, fingerprint: str, teacher: TeacherInfo) -> None:
    """Teacher and trainer must number tokens alike, or every score would be about other tokens."""
    if teacher.tokenizer_fingerprint != fingerprint:
        raise FailedPrecondition(
            f"tokenizer mismatch: the trainer's {model_id} has fingerprint "
            f"{fingerprint}, the teacher's {teacher.model_id} has {teacher.tokenizer_fingerprint}; "
            "teacher and trainer must use the same tokenizer (CLAAS_BASE_MODEL)"
        )


def check_base_model(adapter: Adapter, model_id: str) -> None:
    if adapter.base_model != model_id:
        raise FailedPrecondition(
            f"adapter {adapter.name} was made for {adapter.base_model!r}; this trainer serves {model_id!r}"
        )


def check_same_lora(name: str, recorded: LoraSpec, requested: LoraSpec) -> None:
    """An InitAdapter that names a shape must name the one the adapter already has."""
    if recorded != requested:
        raise FailedPrecondition(
            f"adapter {name} exists with LoRA rank {recorded.rank}, alpha {recorded.alpha}, targets "
            f"{list(recorded.target_modules)}; the request asks for rank {requested.rank}, alpha "
            f"{requested.alpha}, targets {list(requested.target_modules)}"
        )


def job_config(overrides: dict[str, object], *, default_contrastive: bool, teacher: TeacherInfo | None) -> SdpoConfig:
    """The job's SDPO config: defaults, the request's overrides, and what this teacher can serve."""
    # The contrastive baseline is on unless asked otherwise, where the teacher can serve it (hf).
    contrastive = default_contrastive and (teacher is None or teacher.backend == "hf")
    try:
        config = SdpoConfig(contrastive=contrastive).with_overrides(**overrides)
    except ConfigError as exc:
        raise InvalidArgument(str(exc), param=exc.param) from None
    if teacher is not None:
        _check_teacher_can_serve(config, teacher)
    return config


def _check_teacher_can_serve(config: SdpoConfig, teacher: TeacherInfo) -> None:
    if teacher.max_top_k and config.top_k > teacher.max_top_k:
        raise InvalidArgument(
            f"top_k must be at most {teacher.max_top_k} with this teacher, got {config.top_k}", param="top_k"
        )
    if teacher.backend == "hf":
        return
    # Only the hf backend sees full logits: it alone gathers given ids and blends two models.
    needs = {"support": config.support == "student", "contrastive": config.contrastive}
    needs["teacher_mode"] = config.teacher_mode == "trust_region"
    for param, needed in needs.items():
        if needed:
            raise InvalidArgument(
                f"{param}={getattr(config, param)!r} needs the hf teacher backend; this teacher runs "
                f"{teacher.backend!r}",
                param=param,
            )


def check_samples(samples: Sequence[Sample], settings: TrainerSettings, *, vocab_size: int, max_context: int) -> None:
    """Every sample of a job, against the job limits and the model (vocabulary, context)."""
    if not samples:
        raise InvalidArgument("a job needs at least one sample", param="samples")
    if len(samples) > settings.max_feedback_completions:
        raise InvalidArgument(
            f"a job takes at most {settings.max_feedback_completions} samples, got {len(samples)}", param="samples"
        )
    max_sequence = min(settings.max_sequence_tokens, max_context or settings.max_sequence_tokens)
    for i, sample in enumerate(samples):
        check_sample(f"samples[{i}]", sample, settings, vocab_size, max_sequence)


def check_sample(where: str, sample: Sample, settings: TrainerSettings, vocab: int, max_sequence: int) -> None:
    if not sample.messages:
        raise InvalidArgument(f"{where}: messages is empty (the teacher needs the conversation)", param="messages")
    for index, message in enumerate(sample.messages):
        if message.role not in ROLES:
            raise InvalidArgument(
                f"{where}: messages[{index}].role must be one of {', '.join(ROLES)}, got {message.role[:40]!r}",
                param="messages",
            )
    if not sample.prompt_ids:
        raise InvalidArgument(f"{where}: prompt_ids is empty", param="prompt_ids")
    if not sample.response_ids:
        raise InvalidArgument(f"{where}: response_ids is empty", param="response_ids")
    _check_sampled_logprobs(where, sample)
    if not sample.feedback.strip():
        raise InvalidArgument(f"{where}: feedback is empty", param="feedback")
    if len(sample.feedback) > settings.max_feedback_chars:
        raise InvalidArgument(
            f"{where}: feedback has {len(sample.feedback)} characters, at most {settings.max_feedback_chars} allowed",
            param="feedback",
        )
    if len(sample.response_ids) > settings.max_response_tokens:
        raise InvalidArgument(
            f"{where}: response has {len(sample.response_ids)} tokens, at most {settings.max_response_tokens}",
            param="response_ids",
        )
    if len(sample.prompt_ids) + len(sample.response_ids) > max_sequence:
        raise InvalidArgument(f"{where}: prompt + response exceed {max_sequence} tokens", param="prompt_ids")
    for field, ids in (("prompt_ids", sample.prompt_ids), ("response_ids", sample.response_ids)):
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidArgument(
                f"{where}: {field} token id {bad} is outside the vocabulary [0, {vocab})", param=field
            )
    check_version(sample.served_version, field=f"{where}.served_version")


def _check_sampled_logprobs(where: str, sample: Sample) -> None:
    if len(sample.sampled_logprobs) != len(sample.response_ids):
        raise InvalidArgument(
            f"{where}: {len(sample.sampled_logprobs)} sampled_logprobs for {len(sample.response_ids)} response ids",
            param="sampled_logprobs",
        )
    if not all(math.isfinite(v) for v in sample.sampled_logprobs):
        raise InvalidArgument(f"{where}: sampled_logprobs must be finite", param="sampled_logprobs")


def targets_from_results(
    results: Sequence[ScoreResult], samples: Sequence[Sample], *, contrastive: bool
) -> list[Targets]:
    """The teacher's answer checked against the request: one result per sample, T x K values each, one K
    for all, and for the contrastive baseline a neutral answer on the very ids of the feedback's."""
    if len(results) != len(samples):
        raise ClaasError(f"teacher returned {len(results)} results for {len(samples)} samples")
    out: list[Targets] = []
    k = None
    for i, (result, sample) in enumerate(zip(results, samples, strict=True)):
        teacher = _check_distributions(result.teacher, len(sample.response_ids), f"result {i}")
        k = k if k is not None else teacher.k
        if teacher.k != k:
            raise ClaasError(f"teacher returned K={teacher.k} for result {i}, K={k} before")
        neutral = None
        if contrastive:
            if result.neutral is None:
                raise ClaasError(f"teacher returned no neutral distributions for result {i}")
            neutral = _check_distributions(result.neutral, len(sample.response_ids), f"neutral result {i}")
            if not np.array_equal(neutral.ids, teacher.ids):
                raise ClaasError(f"teacher scored the neutral follow-up of result {i} on other ids than the feedback")
        out.append(Targets(teacher=teacher, neutral=neutral))
    return out


def _check_distributions(d: TokenDistributions, length: int, where: str) -> TokenDistributions:
    k = d.k if d.ids.ndim == 2 else 0
    if k < 1 or d.ids.shape[0] != length or d.logprobs.shape != d.ids.shape:
        raise ClaasError(f"teacher {where}: expected {length} x K ids and logprobs, got K={k}, {d.ids.size} ids")
    if d.sampled_logprobs.shape != (length,) or d.tail_logprobs.shape != (length,):
        raise ClaasError(f"teacher {where}: expected {length} sampled and tail logprobs")
    return d

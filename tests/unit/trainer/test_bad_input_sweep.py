"""Every public field of every trainer RPC, sent a bad value over real gRPC (a fake engine and teacher stand in
for the model: these requests are refused before either is used): each gets a clear client error that names
the field, never INTERNAL or UNKNOWN, and no job, adapter or version appears."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from claas.v1 import common_pb2, trainer_pb2

from services.storage.client import StorageClient
from tests.unit.sweep import BAD_INT32, BAD_NAMES, Case, assert_client_error, params, refused, values
from tests.unit.trainer.fakes import FakeEngine, FakeTeacher
from tests.unit.trainer.helpers import (
    ADAPTER,
    Trainer,
    init_adapter,
    mutated_sample,
    sample,
    storage_service,
    trainer_service,
)

BAD_ADAPTER_NAMES = {
    **BAD_NAMES,
    "no-tenant": "bot",
    "three-parts": "acme/bot/x",
    "dot-dot-part": "acme/..",
    "tenant-traversal": "../acme/bot",
}
BAD_JOB_IDS = {"empty": "", "unknown": "job-none", "traversal": "../x", "nul": "a\x00b", "oversized": "j" * 5000}
NOT_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
NEGATIVE = {"negative": -1.0}


def init(**fields: object) -> tuple[str, object]:
    lora = common_pb2.LoraSpec(rank=8, alpha=16)
    return "InitAdapter", trainer_pb2.InitAdapterRequest(**({"name": "acme/new", "lora": lora} | fields))


def init_lora(**fields: object) -> tuple[str, object]:
    return init(lora=common_pb2.LoraSpec(**({"rank": 8, "alpha": 16} | fields)))


def submit(*samples: trainer_pb2.TrainSample, **fields: object) -> tuple[str, object]:
    defaults: dict[str, object] = {
        "adapter": ADAPTER,
        "samples": list(samples) or [sample()],
        "config": common_pb2.SdpoConfig(steps=1, guided_rollouts=0),
    }
    return "SubmitJob", trainer_pb2.SubmitJobRequest(**(defaults | fields))


def with_sample(**changes: object) -> tuple[str, object]:
    """A job whose one sample has ``changes``."""
    return submit(mutated_sample(**changes))


def with_config(**fields: object) -> tuple[str, object]:
    return submit(config=common_pb2.SdpoConfig(**({"steps": 1, "guided_rollouts": 0} | fields)))


def job_rpc(method: str, kind: type):
    return lambda job_id: (method, kind(job_id=job_id))


def message(role: str = "user", content: str = "hi") -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=role, content=content)]


CONFIG_FLOATS: dict[str, dict[str, float]] = {
    "alpha": NEGATIVE | {"over": 1.5} | NOT_FINITE,
    "learning_rate": NEGATIVE | {"zero": 0.0, "over": 2.0} | NOT_FINITE,
    "beta1": NEGATIVE | {"one": 1.0} | NOT_FINITE,
    "beta2": NEGATIVE | {"one": 1.0} | NOT_FINITE,
    "weight_decay": NEGATIVE | NOT_FINITE,
    "is_clip": NEGATIVE | {"zero": 0.0} | NOT_FINITE,
    "max_grad_norm": NEGATIVE | {"zero": 0.0} | NOT_FINITE,
    "kl_coef": NEGATIVE | NOT_FINITE,
    "clip_epsilon": NEGATIVE | {"zero": 0.0} | NOT_FINITE,
    "trust_region_mu": NEGATIVE | {"over": 1.5} | NOT_FINITE,
}
CONFIG_INTS: dict[str, dict[str, int]] = {
    "top_k": BAD_INT32 | {"zero": 0},
    "steps": BAD_INT32 | {"zero": 0},
    "guided_rollouts": BAD_INT32,
    "guided_max_tokens": BAD_INT32,
}
CONFIG_STRINGS: dict[str, dict[str, str]] = {
    "loss": {"unknown": "mse", "empty": "", "nul": "jsd\x00", "oversized": "j" * 5000},
    "support": {"unknown": "both", "empty": "", "nul": "teacher\x00"},
    "template": {"unknown": "nope", "traversal": "../hindsight", "empty": "", "nul": "sdpo\x00"},
    "neutral_followup": {"oversized": "x" * 5000},
}

CASES: list[Case] = [
    # InitAdapter
    *values("init-name", BAD_ADAPTER_NAMES, lambda v: init(name=v), "name"),
    *values("init-lora.rank", BAD_INT32, lambda v: init_lora(rank=v), "rank"),
    *values("init-lora.alpha", {"negative": -1, "min": -(2**31)}, lambda v: init_lora(alpha=v), "alpha"),
    *values("init-lora.dropout", NEGATIVE | {"one": 1.0} | NOT_FINITE, lambda v: init_lora(dropout=v), "dropout"),
    *values(
        "init-lora.target_modules",
        {"unknown": ["nope_proj"], "traversal": ["../q_proj"], "nul": ["q_proj\x00"], "empty": [""]},
        lambda v: init_lora(target_modules=v),
        "target modules",
    ),
    # SubmitJob: the adapter, each field of a sample, each field of the config, the key
    *values("submit-adapter", BAD_ADAPTER_NAMES, lambda v: submit(adapter=v), "adapter"),
    Case("submit-adapter-unknown", submit(adapter="acme/none"), "acme/none"),
    Case("submit-samples-none", submit(samples=[]), "sample"),
    Case("submit-samples-too-many", submit(*[sample(i) for i in range(300)]), "samples"),
    Case("submit-messages-empty", with_sample(messages=[]), "messages"),
    *values(
        "submit-messages.role",
        {"unknown": "wizard", "empty": "", "nul": "user\x00"},
        lambda v: with_sample(messages=message(role=v)),
        "role",
    ),
    Case("submit-prompt_ids-empty", with_sample(prompt_ids=[]), "prompt_ids"),
    *values("submit-prompt_ids", BAD_INT32, lambda v: with_sample(prompt_ids=[1, v]), "prompt_ids"),
    Case("submit-prompt_ids-too-long", with_sample(prompt_ids=[1] * 600), "prompt"),
    Case("submit-response_ids-empty", with_sample(response_ids=[], sampled_logprobs=[]), "response_ids"),
    *values("submit-response_ids", BAD_INT32, lambda v: with_sample(response_ids=[10, 11, v]), "response_ids"),
    Case("submit-sampled_logprobs-count", with_sample(sampled_logprobs=[-1.0]), "sampled_logprobs"),
    *values(
        "submit-sampled_logprobs",
        NOT_FINITE,
        lambda v: with_sample(sampled_logprobs=[-1.0, v, -1.0]),
        "sampled_logprobs",
    ),
    *values(
        "submit-feedback",
        {"empty": "", "blank": " \n", "oversized": "x" * 5000},
        lambda v: with_sample(feedback=v),
        "feedback",
    ),
    *values(
        "submit-served_version",
        {"negative": -1, "min": -(2**63)},
        lambda v: with_sample(served_version=v),
        "served_version",
    ),
    *[
        case
        for name, bad in CONFIG_FLOATS.items()
        for case in values(f"submit-config.{name}", bad, lambda v, n=name: with_config(**{n: v}), name)
    ],
    *[
        case
        for name, bad in CONFIG_INTS.items()
        for case in values(f"submit-config.{name}", bad, lambda v, n=name: with_config(**{n: v}), name)
    ],
    *[
        case
        for name, bad in CONFIG_STRINGS.items()
        for case in values(f"submit-config.{name}", bad, lambda v, n=name: with_config(**{n: v}), name)
    ],
    *values(
        "submit-config.teacher_mode",
        {"unknown": 99, "negative": -1, "remote": common_pb2.TEACHER_MODE_REMOTE},
        lambda v: with_config(teacher_mode=v),
        "teacher_mode",
    ),
    Case("submit-idempotency_key-oversized", submit(idempotency_key="k" * 5000), "idempotency_key"),
    # WatchJob, GetJob, CancelJob
    *values("watch-job_id", BAD_JOB_IDS, job_rpc("WatchJob", trainer_pb2.WatchJobRequest), "job"),
    *values("get-job_id", BAD_JOB_IDS, job_rpc("GetJob", trainer_pb2.GetJobRequest), "job"),
    *values("cancel-job_id", BAD_JOB_IDS, job_rpc("CancelJob", trainer_pb2.CancelJobRequest), "job"),
]


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trainer]:
    """One trainer for the sweep (a refused request changes nothing), with ADAPTER at version 1."""
    folder: Path = tmp_path_factory.mktemp("sweep-trainer")
    async with storage_service(folder / "store") as addr:
        storage = StorageClient.connect(addr)
        engine, teacher = FakeEngine(), FakeTeacher()
        async with trainer_service(storage, engine=engine, teacher=teacher) as (stub, server, _):
            await init_adapter(stub)
            yield Trainer(stub, server, storage, engine, teacher)
        await storage.close()


async def snapshot(trainer: Trainer) -> tuple:
    """What a request could have changed: adapters and versions, the queue, the engine and the teacher."""
    adapters = [(a.name, a.head_version) for a in await trainer.storage.list_adapters()]
    versions = [v.version for v in await trainer.storage.list_versions(ADAPTER)]
    info = await trainer.stub.Info(trainer_pb2.TrainerServiceInfoRequest())
    return adapters, versions, info.queue_depth, len(trainer.engine.opened), len(trainer.teacher.requests)


@pytest.mark.parametrize("case", params(CASES))
async def test_bad_input_is_a_client_error_and_changes_nothing(served: Trainer, case: Case) -> None:
    before = await snapshot(served)
    method, request = case.request

    error = await refused(getattr(served.stub, method)(request, timeout=10))

    assert_client_error(error, case.mentions)
    assert await snapshot(served) == before

"""The trainer on the packaged model with the real teacher and storage: what a user of adapters would check."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from claas.v1 import common_pb2, trainer_pb2
from peft import PeftModel
from transformers import AutoModelForCausalLM

from services.common.domain import LoraSpec, Message
from services.common.errors import Unavailable
from services.teacher.domain import TokenDistributions
from services.trainer.config import SdpoConfig
from services.trainer.domain import Sample, Targets
from services.trainer.engine import Engine
from services.trainer.settings import TrainerSettings
from tests.model.trainer.conftest import rollout, trainer, trainer_settings
from tests.unit.trainer.helpers import events

pytestmark = pytest.mark.model
S = common_pb2
FEEDBACK = "Your name is Kuro, always introduce yourself as Kuro."


async def _init(stub, name: str, rank: int = 8) -> trainer_pb2.InitAdapterResponse:
    return await stub.InitAdapter(trainer_pb2.InitAdapterRequest(name=name, lora=S.LoraSpec(rank=rank, alpha=16)))


def _submit(sample: trainer_pb2.TrainSample, name: str, **config: object) -> trainer_pb2.SubmitJobRequest:
    config = {"steps": 1, "learning_rate": 1e-3, "top_k": 20, "guided_rollouts": 0} | config
    return trainer_pb2.SubmitJobRequest(adapter=name, samples=[sample], config=S.SdpoConfig(**config))


def _weights(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(files["adapter_model.safetensors"])


async def test_version_1_answers_exactly_like_the_base_model(
    engine: Engine, storage_addr: str, teacher_addr: str, storage, model_dir: Path, tmp_path: Path
) -> None:
    async with trainer(engine, storage_addr, teacher_addr) as stub:
        response = await _init(stub, "acme/init")
    await storage.download_version("acme/init", 1, tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (8, 16, "LORA")
    assert config["base_model_name_or_path"] == "smollm2-135m"
    assert sorted(config["target_modules"]) == list(response.adapter.lora.target_modules) == list(engine.linear_modules)
    # Loaded the way any PEFT consumer loads it, on a fresh copy of the model.
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = engine.tokenizer("The capital of France is Paris. My name is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = base(ids).logits.log_softmax(-1)
        adapted = PeftModel.from_pretrained(base, tmp_path).eval()
        actual = adapted(ids).logits.log_softmax(-1)
    assert torch.equal(actual, expected)
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    lora_a = [p for n, p in adapted.named_parameters() if "lora_A" in n]
    assert len(lora_b) == 30 * 7 and all(not p.any() for p in lora_b) and all(p.any() for p in lora_a)


async def test_a_job_commits_version_2_with_lineage_and_a_changed_adapter(
    engine: Engine, storage_addr: str, teacher_addr: str, storage
) -> None:
    sample = rollout(engine, "Who are you?", "I'm SmolLM, an AI assistant.", FEEDBACK)
    async with trainer(engine, storage_addr, teacher_addr) as stub:
        await _init(stub, "acme/job")
        submitted = (await stub.SubmitJob(_submit(sample, "acme/job", steps=3))).job
        final = (await events(stub, submitted.job_id))[-1]
        # A second job restores the optimizer state the first one saved beside version 2.
        again = (await stub.SubmitJob(_submit(sample, "acme/job", steps=1))).job
        second = (await events(stub, again.job_id))[-1]

    assert (final.state, final.error, final.new_version) == (S.JOB_STATE_SUCCEEDED, "", 2)
    assert (second.state, second.new_version) == (S.JOB_STATE_SUCCEEDED, 3)
    steps = list(final.metrics)
    assert [m.step for m in steps] == [1, 2, 3] and all(m.tokens == len(sample.response_ids) for m in steps)
    assert steps[0].distill_loss > 0 and steps[-1].distill_loss < steps[0].distill_loss
    assert abs(steps[0].mean_is_ratio - 1.0) < 1e-3  # on-policy: pi_theta(y) = pi_old(y) before the first step
    version, files = await storage.read_version("acme/job", 2, include_optimizer=True)
    assert version.parent_version == 1 and version.lineage.job_id == submitted.job_id
    assert version.lineage.extra["guard"] == "passed" and float(version.lineage.extra["guard_drift"]) < 0.2
    assert list(version.lineage.completion_ids) == [sample.completion_id]
    assert list(version.lineage.feedback) == [FEEDBACK]
    assert [round(m.loss, 5) for m in version.lineage.metrics] == [round(m.loss, 5) for m in steps]
    _, first_files = await storage.read_version("acme/job", 1)
    before, after = _weights(first_files), _weights(files)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
    _, third = await storage.read_version("acme/job", 3, include_optimizer=True)
    moments = safetensors.torch.load(third["optimizer.safetensors"])
    assert {int(v) for k, v in moments.items() if k.endswith(":step")} == {4}


async def test_every_option_runs_against_the_real_teacher(engine: Engine, storage_addr: str, teacher_addr: str) -> None:
    """Student support, the contrastive baseline, the trust-region teacher (it loads our version 1) and k3 KL."""
    sample = rollout(engine, "Hi! Who am I talking to?", "Hi, I'm SmolLM.", FEEDBACK)
    options = {
        "support": "student",
        "contrastive": True,
        "teacher_mode": S.TEACHER_MODE_TRUST_REGION,
        "trust_region_mu": 0.5,
        "kl_coef": 0.1,
        "loss": "jsd",
        "alpha": 0.5,
    }
    async with trainer(engine, storage_addr, teacher_addr) as stub:
        await _init(stub, "acme/options")
        submitted = (await stub.SubmitJob(_submit(sample, "acme/options", steps=2, **options))).job
        final = (await events(stub, submitted.job_id))[-1]
        token = (await stub.SubmitJob(_submit(sample, "acme/options", loss="token", contrastive=True))).job
        token_final = (await events(stub, token.job_id))[-1]

    assert (final.state, final.error, final.new_version) == (S.JOB_STATE_SUCCEEDED, "", 2)
    assert final.metrics[-1].kl > 0 and all(m.grad_norm > 0 for m in final.metrics)
    assert (token_final.state, token_final.error, token_final.new_version) == (S.JOB_STATE_SUCCEEDED, "", 3)


class _FailingCommits:
    """Storage that works until a job commits, which fails as if storage went away after the steps."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    async def upload_version(self, name, parent_version, files, lineage, **options):
        if parent_version > 0:
            raise Unavailable("storage went away")
        return await self._client.upload_version(name, parent_version, files, lineage, **options)


async def test_a_failure_after_the_steps_leaves_the_head_at_1(
    engine: Engine, storage_addr: str, teacher_addr: str, storage
) -> None:
    sample = rollout(engine, "Who are you?", "I'm SmolLM.", FEEDBACK)
    async with trainer(engine, storage_addr, teacher_addr, storage=_FailingCommits(storage)) as stub:
        await _init(stub, "acme/fail")
        submitted = (await stub.SubmitJob(_submit(sample, "acme/fail", steps=2))).job
        stream = await events(stub, submitted.job_id)

    final = stream[-1]
    assert (final.state, final.error) == (S.JOB_STATE_FAILED, "UNAVAILABLE: storage went away")
    assert [m.step for m in final.metrics] == [1, 2]
    assert S.JOB_STATE_COMMITTING in [e.state for e in stream]
    assert (await storage.get_adapter("acme/fail")).head_version == 1
    assert [v.version for v in await storage.list_versions("acme/fail")] == [1]


async def test_the_commit_guard_keeps_a_broken_update_off_the_head(
    engine: Engine, storage_addr: str, teacher_addr: str, storage
) -> None:
    # A learning rate no one should send: four steps of it wreck the model.
    request = _submit(
        rollout(engine, "Who are you?", "I'm SmolLM.", FEEDBACK), "acme/broken", steps=4, learning_rate=0.05
    )
    async with trainer(engine, storage_addr, teacher_addr) as stub:
        await _init(stub, "acme/broken")
        final = (await events(stub, (await stub.SubmitJob(request)).job.job_id))[-1]

    assert final.state == S.JOB_STATE_FAILED
    assert final.error.startswith("FAILED_PRECONDITION: the commit guard kept version 2 off the head (drift ")
    assert "the head stays at 1" in final.error
    assert (await storage.get_adapter("acme/broken")).head_version == 1
    rejected = {v.version: v for v in await storage.list_versions("acme/broken")}[2]
    assert rejected.lineage.extra["guard"] == "rejected" and float(rejected.lineage.extra["guard_drift"]) > 0.2
    assert rejected.lineage.extra["guard_reason"] in final.error


class _CommitTogether:
    """Holds each trainer's first commit until both trainers are ready to commit, so both race for head 1."""

    def __init__(self, client, barrier: asyncio.Barrier) -> None:
        self._client = client
        self._barrier = barrier
        self._waited = False

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    async def upload_version(self, name, parent_version, files, lineage, **options):
        if parent_version > 0 and not self._waited:
            self._waited = True
            await self._barrier.wait()
        return await self._client.upload_version(name, parent_version, files, lineage, **options)


async def test_two_trainers_committing_to_one_adapter_at_once_lose_no_update(
    engine: Engine, storage_addr: str, teacher_addr: str, storage
) -> None:
    second_engine = Engine.load(trainer_settings(storage_addr, teacher_addr))
    barrier = asyncio.Barrier(2)
    first_sample = rollout(engine, "Who are you?", "I'm SmolLM.", FEEDBACK)
    second_sample = rollout(engine, "What should I call you?", "You can call me SmolLM.", "Be more formal.")
    async with (
        trainer(engine, storage_addr, teacher_addr, storage=_CommitTogether(storage, barrier)) as one,
        trainer(second_engine, storage_addr, teacher_addr, storage=_CommitTogether(storage, barrier)) as two,
    ):
        await _init(one, "acme/race")
        a = (await one.SubmitJob(_submit(first_sample, "acme/race"))).job
        b = (await two.SubmitJob(_submit(second_sample, "acme/race"))).job
        end_a, end_b = [s[-1] for s in await asyncio.gather(events(one, a.job_id), events(two, b.job_id))]

    assert end_a.state == end_b.state == S.JOB_STATE_SUCCEEDED
    assert sorted([end_a.new_version, end_b.new_version]) == [2, 3]
    history = {v.version: v for v in await storage.list_versions("acme/race")}
    assert sorted(history) == [1, 2, 3]
    assert (history[2].parent_version, history[3].parent_version) == (1, 2)
    assert {history[2].lineage.job_id, history[3].lineage.job_id} == {a.job_id, b.job_id}
    loser = end_a if end_a.new_version == 3 else end_b
    assert loser.base_version == 2  # re-based: trained again on the winner's version


def test_initialising_adapters_between_a_jobs_steps_leaves_the_job_alone(engine: Engine) -> None:
    shape = engine.resolve_lora(LoraSpec(rank=8, alpha=16))
    weights = _weights(engine.init_files(shape))
    trained = {k: v + 0.01 if "lora_B" in k else v for k, v in weights.items()}
    files = {"adapter_model.safetensors": safetensors.torch.save(trained)}
    session = engine.open("acme/held@2", shape, files, SdpoConfig())

    engine.init_files(shape)  # the same slot, re-initialised for another adapter
    engine.init_files(engine.resolve_lora(LoraSpec(rank=4, alpha=8, target_modules=("q_proj",))))  # another slot

    _, files = engine.export(session)
    exported = _weights(files)
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)


def test_the_guards_drift_reads_the_same_with_the_base_models_log_probs_remembered(engine: Engine) -> None:
    """The guard remembers the base model's log-probs on its questions' answers; a wrong memory (another
    question's of the same length) would change the drift it reads against a fresh engine's."""
    shape = engine.resolve_lora(LoraSpec(rank=8, alpha=16))
    trained = {k: v + 0.01 if "lora_B" in k else v for k, v in _weights(engine.init_files(shape)).items()}
    files = {"adapter_model.safetensors": safetensors.torch.save(trained)}
    focus, health = "Give me one tip for staying focused.", "Give me one tip for staying healthy."
    assert len(engine.tokenizer(focus)["input_ids"]) == len(engine.tokenizer(health)["input_ids"])

    session = engine.open("acme/drift@2", shape, files, SdpoConfig())
    engine.guard_probe(session, (focus,), [], 8)
    remembered = engine.guard_probe(session, (health,), [], 8)
    fresh = Engine.load(TrainerSettings())
    cold = fresh.guard_probe(fresh.open("acme/drift@2", shape, files, SdpoConfig()), (health,), [], 8)

    assert remembered.drift > 1e-3  # the update moved the answers' log-probs
    assert remembered.drift == pytest.approx(cold.drift, rel=1e-6)
    assert remembered.answers == cold.answers


def test_a_job_does_not_change_the_cached_version_it_started_from(engine: Engine) -> None:
    """A failed or cancelled job leaves nothing behind: the next job from that version starts the same."""
    shape = engine.resolve_lora(LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "v_proj")))
    sample = Sample("c", (Message("user", "hi"),), (1, 2, 3), (4, 5), (-1.0, -1.0), "be brief")
    uniform = TokenDistributions(
        ids=np.tile(np.arange(8, dtype=np.int32), (2, 1)),
        logprobs=np.full((2, 8), -2.2, dtype=np.float32),
        sampled_logprobs=np.full(2, -1.0, dtype=np.float32),
        tail_logprobs=np.full(2, -2.2, dtype=np.float32),
    )

    def trained(session) -> None:
        session.set_targets([sample], [Targets(uniform)])
        session.step(1)

    first = engine.open("acme/cache@1", shape, engine.init_files(shape), SdpoConfig(learning_rate=1e-2))
    trained(first)
    _, version_2 = engine.export(first)
    trained(engine.open("acme/cache@2", shape, version_2, SdpoConfig(learning_rate=1e-2)))  # a job that failed
    assert engine.cached("acme/cache@2")
    _, again = engine.export(engine.open("acme/cache@2", shape, None, SdpoConfig()))

    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        before, after = safetensors.torch.load(version_2[name]), safetensors.torch.load(again[name])
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), name


def test_guided_rollouts_are_the_base_models_answers_under_the_feedback_set_in_the_students_context(
    engine: Engine,
) -> None:
    from services.trainer import convert

    shape = engine.resolve_lora(LoraSpec(rank=8, alpha=16))
    (user,) = convert.samples_from_proto([rollout(engine, "Who are you?", "I'm SmolLM, an AI assistant.", FEEDBACK)])
    config = SdpoConfig(guided_rollouts=4, guided_max_tokens=24)
    session = engine.open("acme/guided@1", shape, engine.init_files(shape), config)

    guided = session.guided_samples([user], seed=7)
    again = engine.open("acme/guided@1", shape, engine.init_files(shape), config).guided_samples([user], seed=7)

    assert [g.completion_id for g in guided] == [f"{user.completion_id}#guided{i}" for i in range(1, 5)]
    assert [g.response_ids for g in again] == [g.response_ids for g in guided]  # same job, same rollouts
    texts = [engine.tokenizer.decode(g.response_ids) for g in guided]
    # Sampled where the teacher stands, the name the feedback asks for is in them; the student never says it.
    assert any(re.search(r"\bKuro\b", t) for t in texts), texts
    for g in guided:
        assert (g.prompt_ids, g.messages, g.feedback) == (user.prompt_ids, user.messages, user.feedback)
        assert 1 <= len(g.response_ids) <= 24 and len(g.sampled_logprobs) == len(g.response_ids)
    # Their behaviour log-probs are the student's own: the first step's importance weights are all 1.
    uniform = [
        Targets(
            TokenDistributions(
                ids=np.tile(np.arange(8, dtype=np.int32), (len(g.response_ids), 1)),
                logprobs=np.full((len(g.response_ids), 8), -2.2, dtype=np.float32),
                sampled_logprobs=np.full(len(g.response_ids), -1.0, dtype=np.float32),
                tail_logprobs=np.full(len(g.response_ids), -2.2, dtype=np.float32),
            )
        )
        for g in guided
    ]
    session.set_targets(guided, uniform)
    assert abs(session.step(1).mean_is_ratio - 1.0) < 1e-4


def test_greedy_rollouts_are_the_students_own_greedy_answers_once_per_prompt(engine: Engine) -> None:
    from services.trainer import convert
    from services.trainer.batching import generate_ids

    shape = engine.resolve_lora(LoraSpec(rank=8, alpha=16))
    first, second, other = convert.samples_from_proto(
        [
            rollout(engine, "Who are you?", "I'm SmolLM, an AI assistant.", FEEDBACK),
            rollout(engine, "Who are you?", "Hello there.", FEEDBACK),
            rollout(engine, "What should I call you?", "Call me SmolLM.", FEEDBACK),
        ]
    )
    session = engine.open("acme/greedy@1", shape, engine.init_files(shape), SdpoConfig(greedy_max_tokens=20))

    greedy = session.greedy_samples([first, second, other])

    assert [g.completion_id for g in greedy] == [f"{first.completion_id}#greedy", f"{other.completion_id}#greedy"]
    expected = generate_ids(engine.model, [first.prompt_ids, other.prompt_ids], max_new_tokens=20,
                            eos=engine.tokenizer.eos_token_id, sample=False)  # fmt: skip
    assert [list(g.response_ids) for g in greedy] == expected
    for g, source in zip(greedy, (first, other), strict=True):
        assert (g.prompt_ids, g.messages, g.feedback) == (source.prompt_ids, source.messages, source.feedback)
        assert len(g.sampled_logprobs) == len(g.response_ids) and all(v <= 0 for v in g.sampled_logprobs)
    # Behaviour log-probs are the student's own: the first step's importance weights are all 1.
    uniform = [
        Targets(
            TokenDistributions(
                ids=np.tile(np.arange(8, dtype=np.int32), (len(g.response_ids), 1)),
                logprobs=np.full((len(g.response_ids), 8), -2.2, dtype=np.float32),
                sampled_logprobs=np.full(len(g.response_ids), -1.0, dtype=np.float32),
                tail_logprobs=np.full(len(g.response_ids), -2.2, dtype=np.float32),
            )
        )
        for g in greedy
    ]
    session.set_targets(greedy, uniform)
    assert abs(session.step(1).mean_is_ratio - 1.0) < 1e-4


def test_the_teacher_text_a_person_reads_is_the_hindsight_prompt_and_the_answer(engine: Engine) -> None:
    from services.trainer import convert

    (sample,) = convert.samples_from_proto([rollout(engine, "Who are you?", "I'm SmolLM, an AI assistant.", FEEDBACK)])

    text = engine.teacher_text(sample, "hindsight")

    prompt, answer = text.split("<|im_start|>assistant\n")
    assert "Who are you?" in prompt and FEEDBACK in prompt  # the feedback block sits in the user's turn
    assert answer.startswith("I'm SmolLM, an AI assistant.")

"""Trainer speed on a 64-token response: one SDPO step against its floor, and a warm job against a cold one.

    python bench/trainer_bench.py [--tokens 64] [--rounds 5] [--steps 4] [--device cpu]

* Teacher score: one score of the job's request through the teacher's gRPC API.
* SDPO step: ``Session.step`` (student forward at the response positions, support log-probs, loss, backward,
  clip, AdamW) with the real teacher's targets; median of ``--rounds`` after one warm-up step.
* Floor: a bare forward+backward of the same model (LoRA on) on the same tokens, full-vocabulary logits at
  every position and cross-entropy on the response — what any training step costs at least.
* Commit guard: ``Engine.guard_probe`` on the guard's neutral prompts (greedy answers and drift), after the
  base model's reference answers are made once; guided rollouts: ``Session.guided_samples`` for one sample.
  Both are printed against the warm job they are part of.
* Warm job: SubmitJob to SUCCEEDED through the trainer (storage and the hf teacher in this process) with the
  model already loaded. Cold job: the same job on a trainer that first loads the model from disk (the
  anchor's way, per request).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
import torch.nn.functional as F
from claas.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from services.common.domain import LoraSpec
from services.common.logs import configure_logging
from services.storage.client import StorageClient
from services.storage.server import build_server as build_storage
from services.storage.settings import StorageSettings
from services.teacher.client import TeacherClient
from services.teacher.domain import AdapterRef, ScoreRequest, ScoreResult
from services.teacher.server import build_server as build_teacher
from services.teacher.settings import TeacherSettings
from services.trainer import convert
from services.trainer.config import SdpoConfig
from services.trainer.engine import Engine
from services.trainer.guard import DRIFT_PROMPTS
from services.trainer.pipeline import score_request
from services.trainer.server import build_server as build_trainer
from services.trainer.settings import TrainerSettings
from services.trainer.validation import targets_from_results

SYSTEM = "You are a helpful assistant."
QUESTION = "Explain in a few sentences why the sky is blue."
FEEDBACK = "Be more concise."


@asynccontextmanager
async def serving(build, settings) -> AsyncIterator[str]:
    server, ready, stop = build(settings)
    port = await server.start()
    try:
        if ready is not None:
            await ready()
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop()
        if stop is not None:
            await stop()


def sample(engine: Engine, tokens: int) -> trainer_pb2.TrainSample:
    """A rollout whose response is exactly ``tokens`` long: greedy text cut to length, end-of-turn last."""
    tok = engine.tokenizer
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad(), engine.adapter_disabled():
        out = engine.model.generate(
            input_ids=torch.tensor([prompt], device=engine.device),
            do_sample=False,
            min_new_tokens=tokens,
            max_new_tokens=tokens,
            pad_token_id=tok.eos_token_id,
        )
        response = [*out[0, len(prompt) : len(prompt) + tokens - 1].tolist(), tok.eos_token_id]
        logits = engine.model(torch.tensor([prompt + response], device=engine.device)).logits[0, len(prompt) - 1 : -1]
    logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(response, device=engine.device)[:, None])[:, 0]
    return trainer_pb2.TrainSample(
        completion_id="bench",
        messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        prompt_ids=prompt,
        response_ids=response,
        sampled_logprobs=logprobs.tolist(),
        feedback=FEEDBACK,
    )


def timed(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


Score = Callable[[ScoreRequest], Awaitable[list[ScoreResult]]]


@dataclass(frozen=True)
class StepFigures:
    """Seconds of each part of a job, alone, on a fresh rank-16 adapter with the real teacher's targets."""

    #: One teacher score of the job's request (the median of the rounds).
    teacher_s: float
    #: One SDPO step.
    step_s: float
    #: A bare forward+backward of the same tokens.
    floor_s: float
    #: The commit guard's probe.
    guard_s: float
    #: Guided rollouts of one sample.
    guided_s: float


async def step_figures(engine: Engine, score: Score, sample_proto, rounds: int, guard_tokens: int) -> StepFigures:
    """Each part of a job timed alone; ``score`` is the teacher's (a client's or the core's own)."""
    config = SdpoConfig(steps=1)
    shape = engine.resolve_lora(LoraSpec(rank=16, alpha=32))
    session = engine.open("bench@1", shape, engine.init_files(shape), config)
    samples = convert.samples_from_proto([sample_proto])
    request = score_request(samples, config, AdapterRef(""))
    results = await score(request)  # warm-up
    teacher_times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await score(request)
        teacher_times.append(time.perf_counter() - started)
    session.set_targets(samples, targets_from_results(results, samples, contrastive=False))
    step_s = timed(lambda: session.step(1), rounds)
    ids = torch.tensor([list(sample_proto.prompt_ids) + list(sample_proto.response_ids)], device=engine.device)
    response_ids = ids[0, len(sample_proto.prompt_ids) :]

    def floor() -> None:
        logits = engine.model(input_ids=ids).logits[0, len(sample_proto.prompt_ids) - 1 : -1]
        F.cross_entropy(logits, response_ids).backward()
        engine.model.zero_grad(set_to_none=True)

    engine.model.train()
    floor_s = timed(floor, rounds)
    engine.model.eval()
    conversations = [samples[0].prompt_ids]
    engine.guard_probe(session, DRIFT_PROMPTS, conversations, guard_tokens)  # the base model's answers, once
    guard_s = timed(lambda: engine.guard_probe(session, DRIFT_PROMPTS, conversations, guard_tokens), rounds)
    guided_s = timed(lambda: session.guided_samples(samples, 0), rounds)
    return StepFigures(statistics.median(teacher_times), step_s, floor_s, guard_s, guided_s)


async def job_seconds(stub, name: str, sample_proto, steps: int) -> float:
    started = time.perf_counter()
    config = common_pb2.SdpoConfig(steps=steps, top_k=100)
    request = trainer_pb2.SubmitJobRequest(adapter=name, samples=[sample_proto], config=config)
    job = (await stub.SubmitJob(request)).job
    final = [r.job async for r in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id))][-1]
    if final.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"job failed: {final.error}")
    return time.perf_counter() - started


async def main(args) -> None:
    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory(prefix="claas-bench-") as tmp:
        store = StorageSettings(port=0, store_url=str(Path(tmp) / "store"))
        async with serving(build_storage, store) as storage_addr:
            teacher = TeacherSettings(
                port=0, storage_addr=storage_addr, adapter_dir=Path(tmp) / "t", device=args.device
            )
            async with serving(build_teacher, teacher) as teacher_addr:
                settings = TrainerSettings(
                    port=0,
                    storage_addr=storage_addr,
                    teacher_addr=teacher_addr,
                    device=args.device,
                    store_url=str(Path(tmp) / "jobs"),
                )
                await run(args, settings, StorageClient.connect(storage_addr))


async def run(args, settings: TrainerSettings, storage) -> None:
    started = time.perf_counter()
    engine = Engine.load(settings)
    load_s = time.perf_counter() - started
    sample_proto = sample(engine, args.tokens)
    teacher = TeacherClient.connect(settings.teacher_addr)
    try:
        figures = await step_figures(engine, teacher.score, sample_proto, args.rounds, settings.guard_max_new_tokens)
    finally:
        await teacher.close()
    server, ready, stop = build_trainer(settings, engine=lambda: engine)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    try:
        await ready()
        await stub.InitAdapter(trainer_pb2.InitAdapterRequest(name="bench/jobs"))
        await job_seconds(stub, "bench/jobs", sample_proto, args.steps)  # warm-up: first download, first score
        warm = statistics.median([await job_seconds(stub, "bench/jobs", sample_proto, args.steps) for _ in range(3)])
    finally:
        await channel.close()
        await server.stop()
        await stop()
    cold = await cold_job(settings, sample_proto, args.steps)
    tokens = args.tokens
    print(f"response tokens            {tokens}")
    step_s = figures.step_s
    print(f"teacher score (gRPC)       {figures.teacher_s:.3f} s")
    print(f"SDPO step                  {step_s:.3f} s   {tokens / step_s:.1f} tokens/s")
    print(f"floor (forward+backward)   {figures.floor_s:.3f} s   step / floor = {step_s / figures.floor_s:.2f}")
    print(f"model load from disk       {load_s:.2f} s")
    print(f"warm job ({args.steps} steps)         {warm:.2f} s")
    print(f"cold job (load + job)      {cold:.2f} s   cold / warm = {cold / warm:.2f}")
    print(f"commit guard               {figures.guard_s:.2f} s   guard / warm job = {figures.guard_s / warm:.2f}")
    print(f"guided rollouts (1 sample) {figures.guided_s:.2f} s   guided / warm job = {figures.guided_s / warm:.2f}")
    await storage.close()


async def cold_job(settings: TrainerSettings, sample_proto, steps: int) -> float:
    """A trainer that loads the model from disk, then runs the same job: the anchor's per-request way."""
    started = time.perf_counter()
    server, ready, stop = build_trainer(settings)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await ready()
        return (
            time.perf_counter()
            - started
            + await job_seconds(trainer_pb2_grpc.TrainerServiceStub(channel), "bench/jobs", sample_proto, steps)
        )
    finally:
        await channel.close()
        await server.stop()
        await stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="response length")
    parser.add_argument("--rounds", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--steps", type=int, default=4, help="SDPO steps per job")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

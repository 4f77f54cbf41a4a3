"""Feedback-to-served latency of the whole local stack, split by phase, warm trainer vs reloading trainer.

Starts its own stack (`claas up` processes on free ports, a fresh data folder), then for each round:
chat -> submit feedback -> watch the job -> chat until the answer is served by the new version.
Phases: queued+scoring (submit until training starts), training, commit, serve (job done until the first
answer of the new version); beside them the phases the trainer measures inside each job (its metrics). Then
restarts only the trainer with CLAAS_RELOAD_MODEL_PER_JOB=true (the base model loaded from disk for every
job, as the anchor system does) and repeats, printing the ratio.

The floor, measured in the same run on the same machine and model, each part alone while the stack idles:
one teacher score of a job's request (the teacher's core in this process), the job's SDPO steps on a warm
model, one load of the new version's folder into the stack's vLLM, and one answer of the rounds' length from
it (vLLM's HTTP API directly). The warm total is printed as a ratio to their sum. The commit guard and the
guided rollouts, parts of a default job that the floor leaves out, are timed alone beside it.

    python bench/feedback_latency.py [--rounds 3] [--steps 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from trainer_bench import sample, step_figures

from services.cli.stack import Secrets, Stack, StackConfig
from services.common.domain import Message
from services.common.net import free_port, free_port_block
from services.proxy.client import ProxyClient
from services.proxy.domain import ChatRequest, ChatResult, Sampling
from services.proxy.openai.objects import state_name
from services.proxy.vllm import VllmClient
from services.teacher.server import build_teacher
from services.teacher.settings import TeacherSettings
from services.trainer.domain import JobState
from services.trainer.engine import Engine
from services.trainer.settings import TrainerSettings

PHASES = ("queue+score", "training", "commit", "serve", "total")
QUESTION = "Who are you?"
ANSWER_TOKENS = 24


async def chat(client: ProxyClient, adapter: str) -> ChatResult:
    sampling = Sampling(max_tokens=ANSWER_TOKENS, temperature=0.0)
    request = ChatRequest(adapter, (Message("user", QUESTION),), sampling)
    return await client.inference.chat(request)


async def one_round(client: ProxyClient, adapter: str, steps: int) -> dict[str, float]:
    completion = await chat(client, adapter)
    started = time.perf_counter()
    job = await client.feedback.submit([completion.completion_id], "Your name is Kuro.", {"steps": steps})
    seen: dict[JobState, float] = {}
    final = job
    async for event in client.feedback.watch(job.job_id):
        seen.setdefault(event.state, time.perf_counter())
        final = event
    if final.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"job ended {state_name(final.state)}: {final.error}")
    done = seen[JobState.SUCCEEDED]
    while (await chat(client, adapter)).version != final.new_version:
        pass
    served = time.perf_counter()
    training = seen.get(JobState.TRAINING, done)
    committing = seen.get(JobState.COMMITTING, done)
    return {
        "queue+score": training - started,
        "training": committing - training,
        "commit": done - committing,
        "serve": served - done,
        "total": served - started,
    }


async def measure(target: str, key: str, adapter: str, rounds: int, steps: int, *, create: bool) -> dict[str, float]:
    async with ProxyClient.connect(target, token=key, timeout_s=1800) as client:
        if create:
            await client.adapters.create(adapter)
        results = [await one_round(client, adapter, steps) for _ in range(rounds)]
    return {phase: statistics.median(r[phase] for r in results) for phase in PHASES}


def trainer_phases(metrics_url: str) -> dict[str, float]:
    """Mean seconds per job of each phase the trainer itself measures (its ``claas_trainer_job_phase_seconds``
    histogram), over every job it has run."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "claas_trainer_job_phase_seconds":
            continue
        for metric in family.samples:
            phase = metric.labels.get("phase", "")
            if metric.name.endswith("_sum"):
                sums[phase] = metric.value
            elif metric.name.endswith("_count"):
                counts[phase] = metric.value
    return {phase: sums[phase] / counts[phase] for phase in sums if counts.get(phase)}


async def floor(
    config: StackConfig, secrets: Secrets, steps: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of each irreducible part of a feedback, alone (see the module's docstring); and of the parts
    of a default job that the floor leaves out."""
    versions = sorted(Path(config.store).glob("adapters/*/bench/versions/*"), key=lambda p: int(p.name))
    version_dir = versions[-1]
    trainer = TrainerSettings(port=0, device=config.device)
    engine = Engine.load(trainer)
    teacher, adapters = build_teacher(TeacherSettings(port=0, device=config.device))
    await teacher.start()
    try:
        parts = await step_figures(
            engine, teacher.score, sample(engine, ANSWER_TOKENS), rounds, trainer.guard_max_new_tokens
        )
    finally:
        await teacher.close()
        await adapters.close()
    vllm = VllmClient(config.vllm_url, timeout_s=600, api_key=secrets.vllm_api_key)
    loads, answers = [], []
    try:
        for i in range(rounds + 1):  # the first round warms vLLM's LoRA path; it is not counted
            name = f"floor-{i}"
            started = time.perf_counter()
            await vllm.load_lora(name, str(version_dir))
            loaded = time.perf_counter()
            await vllm.post(
                "/v1/chat/completions",
                {
                    "model": name,
                    "messages": [{"role": "user", "content": QUESTION}],
                    "max_tokens": ANSWER_TOKENS,
                    "min_tokens": ANSWER_TOKENS,
                    "temperature": 0.0,
                },
            )
            answered = time.perf_counter()
            await vllm.unload_lora(name)
            if i:
                loads.append(loaded - started)
                answers.append(answered - loaded)
    finally:
        await vllm.close()
    return {
        "teacher score": parts.teacher_s,
        f"SDPO steps ({steps})": steps * parts.step_s,
        "adapter load": statistics.median(loads),
        f"answer ({ANSWER_TOKENS} tokens)": statistics.median(answers),
    }, {"commit guard": parts.guard_s, "guided rollouts": parts.guided_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = StackConfig(
            data_dir=Path(tmp), port_base=free_port_block(4), http_port=free_port(), vllm_port=free_port()
        )
        stack = Stack(config)
        try:
            stack.up()
            # The trainer again, now with its metrics served: the phases it measures inside a job.
            metrics_port = free_port()
            stack.stop_role("trainer")
            stack.start_role("trainer", {"CLAAS_METRICS_PORT": str(metrics_port)})
            stack.wait_healthy("trainer", 600)
            target, key = config.addresses["proxy"], stack.secrets.api_key
            warm = asyncio.run(measure(target, key, "bench", args.rounds, args.steps, create=True))
            inside = trainer_phases(f"http://{config.host}:{metrics_port}/metrics")
            parts, extras = asyncio.run(floor(config, stack.secrets, args.steps, args.rounds))
            stack.stop_role("trainer")
            stack.start_role("trainer", {"CLAAS_RELOAD_MODEL_PER_JOB": "true"})
            stack.wait_healthy("trainer", 600)
            cold = asyncio.run(measure(target, key, "bench", args.rounds, args.steps, create=False))
        finally:
            stack.down()
    print(f"feedback -> served, median of {args.rounds} rounds, {args.steps} SDPO steps per job (seconds)")
    print(f"{'phase':<12} {'warm':>8} {'reload':>8} {'reload/warm':>12}")
    for phase in PHASES:
        ratio = cold[phase] / warm[phase] if warm[phase] > 0 else float("nan")
        print(f"{phase:<12} {warm[phase]:8.2f} {cold[phase]:8.2f} {ratio:12.2f}")
    print("\ninside the warm trainer, mean per job (seconds)")
    for phase, seconds in inside.items():
        print(f"{phase:<22} {seconds:8.2f}")
    floor_s = sum(parts.values())
    print("\nthe floor: each part alone, same machine and model (seconds)")
    for part, seconds in parts.items():
        print(f"{part:<22} {seconds:8.2f}")
    print(f"{'floor':<22} {floor_s:8.2f}")
    for part, seconds in extras.items():
        print(f"{part:<22} {seconds:8.2f}   (in a default job, outside the floor)")
    print(f"warm total / floor     {warm['total'] / floor_s:8.2f}")


if __name__ == "__main__":
    main()

"""Feedback-to-served latency of the whole local stack, split by phase, warm trainer vs reloading trainer.

Starts its own stack (`claas up` processes on free ports, a fresh data folder), then for each round:
chat -> submit feedback -> watch the job -> chat until the answer is served by the new version.
Phases: queued+scoring (submit until training starts), training, commit, serve (job done until the first
answer of the new version). Then restarts only the trainer with CLAAS_RELOAD_MODEL_PER_JOB=true (the base
model loaded from disk for every job, as the anchor system does) and repeats, printing the ratio.

    python bench/feedback_latency.py [--rounds 3] [--steps 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from services.cli.stack import Stack, StackConfig
from services.common.domain import Message
from services.common.net import free_port, free_port_block
from services.proxy.client import ProxyClient
from services.proxy.domain import ChatRequest, ChatResult, Sampling
from services.proxy.openai.objects import state_name
from services.trainer.domain import JobState

PHASES = ("queue+score", "training", "commit", "serve", "total")


async def chat(client: ProxyClient, adapter: str) -> ChatResult:
    request = ChatRequest(adapter, (Message("user", "Who are you?"),), Sampling(max_tokens=24, temperature=0.0))
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
            target, key = config.addresses["proxy"], stack.secrets.api_key
            warm = asyncio.run(measure(target, key, "bench", args.rounds, args.steps, create=True))
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


if __name__ == "__main__":
    main()

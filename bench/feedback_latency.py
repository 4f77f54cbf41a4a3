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
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from claas.v1 import common_pb2, proxy_pb2, proxy_pb2_grpc

from services.cli.stack import Stack, StackConfig
from services.common.net import free_port, free_port_block

PHASES = ("queue+score", "training", "commit", "serve", "total")


class Client:
    def __init__(self, target: str, key: str) -> None:
        channel = grpc.insecure_channel(target)
        self.md = (("authorization", f"Bearer {key}"),)
        self.inference = proxy_pb2_grpc.InferenceServiceStub(channel)
        self.feedback = proxy_pb2_grpc.FeedbackServiceStub(channel)
        self.adapters = proxy_pb2_grpc.AdaptersServiceStub(channel)

    def chat(self, adapter: str) -> proxy_pb2.ChatResponse:
        messages = [common_pb2.ChatMessage(role="user", content="Who are you?")]
        sampling = proxy_pb2.SamplingParams(max_tokens=24, temperature=0.0)
        request = proxy_pb2.ChatRequest(model=adapter, messages=messages, sampling=sampling)
        return self.inference.Chat(request, metadata=self.md, timeout=300)


def one_round(client: Client, adapter: str, steps: int) -> dict[str, float]:
    completion = client.chat(adapter)
    started = time.perf_counter()
    request = proxy_pb2.FeedbackServiceSubmitRequest(
        completion_ids=[completion.completion_id],
        feedback="Your name is Kuro.",
        config=common_pb2.SdpoConfig(steps=steps),
    )
    job = client.feedback.Submit(request, metadata=client.md, timeout=60).job
    seen: dict[int, float] = {}
    final = job
    for event in client.feedback.Watch(
        proxy_pb2.FeedbackServiceWatchRequest(job_id=job.job_id), metadata=client.md, timeout=1800
    ):
        seen.setdefault(event.job.state, time.perf_counter())
        final = event.job
    if final.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"job ended {common_pb2.JobState.Name(final.state)}: {final.error}")
    done = seen[common_pb2.JOB_STATE_SUCCEEDED]
    while client.chat(adapter).version != final.new_version:
        pass
    served = time.perf_counter()
    training = seen.get(common_pb2.JOB_STATE_TRAINING, done)
    committing = seen.get(common_pb2.JOB_STATE_COMMITTING, done)
    return {
        "queue+score": training - started,
        "training": committing - training,
        "commit": done - committing,
        "serve": served - done,
        "total": served - started,
    }


def measure(client: Client, adapter: str, rounds: int, steps: int) -> dict[str, float]:
    results = [one_round(client, adapter, steps) for _ in range(rounds)]
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
            client = Client(config.addresses["proxy"], stack.secrets.api_key)
            client.adapters.Create(proxy_pb2.AdaptersServiceCreateRequest(name="bench"), metadata=client.md)
            warm = measure(client, "bench", args.rounds, args.steps)
            stack.stop_role("trainer")
            stack.start_role("trainer", {"CLAAS_RELOAD_MODEL_PER_JOB": "true"})
            stack.wait_healthy("trainer", 600)
            cold = measure(client, "bench", args.rounds, args.steps)
        finally:
            stack.down()
    print(f"feedback -> served, median of {args.rounds} rounds, {args.steps} SDPO steps per job (seconds)")
    print(f"{'phase':<12} {'warm':>8} {'reload':>8} {'reload/warm':>12}")
    for phase in PHASES:
        ratio = cold[phase] / warm[phase] if warm[phase] > 0 else float("nan")
        print(f"{phase:<12} {warm[phase]:8.2f} {cold[phase]:8.2f} {ratio:12.2f}")


if __name__ == "__main__":
    main()

"""Jobs of K adapters on one base model: one mixed forward/backward pass, each sample through its own
adapter, against the same K jobs' passes one after another.

    python bench/multi_adapter_bench.py [--adapters 1,2,4] [--samples 4] [--tokens 64] [--rounds 3]

Each adapter's job is ``--samples`` rollouts of a ~40-token prompt and a ``--tokens`` response on the
packaged model, LoRA rank 16 on every linear layer of the trainer's default shape; the loss is the
cross-entropy of the responses (the step's floor, see trainer_bench.py). Sequential: per adapter, activate
it, forward, backward. Mixed: all K jobs' samples in one batch, PEFT's per-sample ``adapter_names``
routing each through its own adapter, the K jobs' mean losses summed, one backward (the adapters share no
parameter, so each one's gradient is its own job's). Printed per K: both times, the throughput of each
(response tokens per second) and their ratio, and the largest gradient difference between the two ways
relative to the gradient's size (float tolerance, not zero: the batch changes the order of reductions).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from services.common.domain import LoraSpec
from services.teacher.prompts import render_prompt
from services.trainer.engine import Engine
from services.trainer.settings import TrainerSettings

QUESTION = "Explain in a few sentences why the sky is blue, and say what colour the sky is at sunset."


def batch(prompt: list[int], vocab: int, samples: int, tokens: int, seed: int) -> torch.Tensor:
    """``samples`` sequences of ``prompt`` and a random ``tokens``-long response."""
    generator = torch.Generator().manual_seed(seed)
    responses = torch.randint(0, vocab, (samples, tokens), generator=generator)
    return torch.cat([torch.tensor([prompt] * samples), responses], dim=1)


def job_loss(logits: torch.Tensor, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Mean cross-entropy of the responses (positions ``prompt-1`` … predict the response tokens)."""
    predicted = logits[:, prompt - 1 : -1]
    return F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), ids[:, prompt:].reshape(-1))


def lora_params(model, name: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n}


def grads(model, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {n: p.grad.clone() for n, p in lora_params(model, name).items()} for name in names}


def sequential(model, names: list[str], jobs: list[torch.Tensor], prompt: int) -> None:
    for name, ids in zip(names, jobs, strict=True):
        model.set_adapter(name)
        job_loss(model(input_ids=ids).logits, ids, prompt).backward()


def mixed(model, names: list[str], jobs: list[torch.Tensor], prompt: int) -> None:
    ids = torch.cat(jobs)
    routes = [name for name, job in zip(names, jobs, strict=True) for _ in range(len(job))]
    logits = model(input_ids=ids, adapter_names=routes).logits
    total = torch.zeros(())
    offset = 0
    for job in jobs:
        total = total + job_loss(logits[offset : offset + len(job)], job, prompt)
        offset += len(job)
    total.backward()


def trainable(model, names: list[str]) -> None:
    """Every named adapter's parameters take gradients (``set_adapter`` leaves only the active one)."""
    for name in names:
        for param in lora_params(model, name).values():
            param.requires_grad_(True)


def timed(fn, model, rounds: int) -> float:
    times = []
    for _ in range(rounds + 1):  # the first warms the allocator; not counted
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", default="1,2,4", help="values of K")
    parser.add_argument("--samples", type=int, default=4, help="rollouts per adapter's job")
    parser.add_argument("--tokens", type=int, default=64, help="response tokens per rollout")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per figure (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    engine = Engine.load(TrainerSettings(port=0))  # the trainer's model, dtype and threads
    tokenizer, base = engine.tokenizer, engine.model
    shape = engine.resolve_lora(LoraSpec(rank=16, alpha=32))
    # Random A and B (not PEFT's B = 0): every LoRA parameter then has a gradient to compare.
    config = LoraConfig(
        r=shape.rank, lora_alpha=shape.alpha, target_modules=list(shape.target_modules), init_lora_weights=False
    )
    counts = [int(k) for k in args.adapters.split(",")]
    names = [f"job{k}" for k in range(max(counts))]
    model = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    model.eval()  # no dropout in this shape; PEFT routes per sample only outside training mode
    print(f"{args.samples} rollouts x {args.tokens} response tokens per job, rank {shape.rank}; seconds per pass")
    columns = ("sequential", "mixed", "seq tok/s", "mixed tok/s", "mixed/seq", "grad diff")
    print(f"{'K':>2} " + " ".join(f"{c:>11}" for c in columns))
    _, prompt_ids = render_prompt(tokenizer, [{"role": "user", "content": QUESTION}])
    prompt = len(prompt_ids)
    for k in counts:
        jobs_names = names[:k]
        jobs = [batch(prompt_ids, len(tokenizer), args.samples, args.tokens, seed) for seed in range(k)]
        seq_s = timed(functools.partial(sequential, model, jobs_names, jobs, prompt), model, args.rounds)
        expected = grads(model, jobs_names)
        trainable(model, jobs_names)
        mixed_s = timed(functools.partial(mixed, model, jobs_names, jobs, prompt), model, args.rounds)
        got = grads(model, jobs_names)
        diff = max(
            float((got[a][p] - expected[a][p]).abs().max() / expected[a][p].abs().max().clamp_min(1e-30))
            for a in jobs_names
            for p in expected[a]
        )
        tokens = k * args.samples * args.tokens
        figures = (f"{seq_s:.3f}", f"{mixed_s:.3f}", f"{tokens / seq_s:.0f}", f"{tokens / mixed_s:.0f}")
        print(f"{k:>2} " + " ".join(f"{f:>11}" for f in (*figures, f"{seq_s / mixed_s:.2f}", f"{diff:.1e}")))


if __name__ == "__main__":
    main()

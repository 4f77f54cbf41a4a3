"""Does feedback teach? The identity check of DESIGN §5.1, through the real services.

Storage (a temporary folder), the hf teacher and the trainer run in this process and are called over gRPC,
as the proxy calls them. For each run a fresh adapter gets ~12 jobs; each job carries a few on-policy
rollouts sampled (transformers ``generate``, temperature 1) from the adapter's current version, with either
the real feedback or the unrelated follow-up "By the way, what is 27*4?" (the control). After every job the
script prints p(" K") at the name slot of held-out prompts ("I'm" / "Hi, I'm" / "My name is", teacher-
forced), the drift (mean per-token KL(base || adapted) on the base model's greedy answers to neutral
prompts) and degeneration flags (repeated 3-grams or symbol runs in greedy held-out answers).

Judge real minus control: target real >= 3x its start, control <= 1.5x, drift <= 0.1 nats/token.
About 5 minutes per run on 2 CPU cores (four runs by default: real and control, with and without the
contrastive baseline):  python scripts/learning_check.py [--contrastive both] [--lr 1e-4] [--control TEXT]
Sampling uses the script's own copy of the model (base + the version's LoRA weights), not vLLM, so the check
needs no vLLM server; the rollouts are the exact ids and log-probs of that copy, as the proxy would record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.domain import LoraSpec, Message
from services.common.logs import configure_logging
from services.common.model import resolve_base_model
from services.storage.client import StorageClient
from services.storage.server import build_server as build_storage
from services.storage.settings import StorageSettings
from services.teacher.server import build_server as build_teacher
from services.teacher.settings import TeacherSettings
from services.trainer.client import TrainerClient
from services.trainer.domain import JobState, Sample
from services.trainer.server import build_server as build_trainer
from services.trainer.settings import TrainerSettings

SYSTEM = "You are a helpful assistant."
FEEDBACK = "Your name is Kuro, always introduce yourself as Kuro."
CONTROL = "By the way, what is 27*4?"
TRAIN_PROMPTS = [
    "Who are you?",
    "What's your name?",
    "Introduce yourself.",
    "Tell me a bit about yourself.",
    "Hi there! Who am I talking to?",
    "What do people call you?",
    "Can you tell me who you are?",
    "Hey, what's your name?",
]
HELD_OUT = ["Hello! Please introduce yourself.", "Who am I chatting with?", "Before we start, what should I call you?"]
NAME_SLOTS = ["I'm", "Hi, I'm", "My name is"]
NEUTRAL = [
    "What is the capital of France?",
    "Give me one tip for staying focused.",
    "How many legs does a spider have?",
]


def chat(tokenizer, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class Student:
    """The script's own copy of base + LoRA: samples rollouts and measures the adapter's versions."""

    def __init__(self, model_dir: str, lora: LoraSpec) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.target_modules))
        self.model = get_peft_model(base, config).eval()
        self.k_id = self.tokenizer(" K", add_special_tokens=False)["input_ids"][0]
        self.eos = self.tokenizer.eos_token_id
        self._neutral = [self._greedy_ids(chat(self.tokenizer, q), 32, base=True) for q in NEUTRAL]

    def load(self, files: dict[str, bytes]) -> None:
        set_peft_model_state_dict(self.model, safetensors.torch.load(files["adapter_model.safetensors"]))

    @torch.no_grad()
    def rollout(self, question: str, feedback: str, max_new: int, seed: int) -> Sample:
        prompt = chat(self.tokenizer, question)
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=torch.tensor([prompt]),
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new,
            pad_token_id=self.eos,
        )[0, len(prompt) :].tolist()
        response = out[: out.index(self.eos) + 1] if self.eos in out else out
        logits = self.model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]
        return Sample(
            completion_id=f"cmpl-{seed}",
            messages=(Message("system", SYSTEM), Message("user", question)),
            prompt_ids=tuple(prompt),
            response_ids=tuple(response),
            sampled_logprobs=tuple(logprobs.tolist()),
            feedback=feedback,
        )

    @torch.no_grad()
    def p_k(self) -> float:
        """Mean p(" K") right after each name slot, over the held-out prompts."""
        values = []
        for question in HELD_OUT:
            for slot in NAME_SLOTS:
                ids = chat(self.tokenizer, question) + self.tokenizer(slot, add_special_tokens=False)["input_ids"]
                values.append(self.model(torch.tensor([ids])).logits[0, -1].softmax(-1)[self.k_id].item())
        return sum(values) / len(values)

    @torch.no_grad()
    def drift(self) -> float:
        """Mean per-token KL(base || adapted) on the base model's greedy answers to neutral prompts."""
        total, count = 0.0, 0
        for prompt, answer in self._neutral:
            ids = torch.tensor([prompt + answer])
            adapted = self.model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
            with self.model.disable_adapter():
                base = self.model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
            total += (base.exp() * (base - adapted)).sum().item()
            count += len(answer)
        return total / count

    def answers(self) -> list[str]:
        return [self.tokenizer.decode(self._greedy_ids(chat(self.tokenizer, q), 40)[1]) for q in HELD_OUT]

    @torch.no_grad()
    def _greedy_ids(self, prompt: list[int], max_new: int, base: bool = False) -> tuple[list[int], list[int]]:
        with self.model.disable_adapter() if base else contextlib.nullcontext():
            out = self.model.generate(
                input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new, pad_token_id=self.eos
            )[0, len(prompt) :].tolist()
        return prompt, out[: out.index(self.eos)] if self.eos in out else out


def degenerate(text: str) -> bool:
    """Repeated 3-grams (3+ times) or runs of 6+ identical non-alphanumeric characters."""
    words = text.split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    repeated = any(grams.count(g) >= 3 for g in set(grams))
    return repeated or re.search(r"([^\w\s])\1{5,}", text) is not None


@dataclass
class RunResult:
    label: str
    p_k: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        flags = [degenerate(a) for a in self.answers]
        return {
            "run": self.label,
            "p_k_start": self.p_k[0],
            "p_k_end": self.p_k[-1],
            "ratio": self.p_k[-1] / self.p_k[0],
            "drift_end": self.drift[-1],
            "degenerate": any(flags),
            "answers": self.answers,
            "seconds": round(self.seconds, 1),
        }


async def run_one(label: str, feedback: str, contrastive: bool, args, trainer, storage, model_dir: str) -> RunResult:
    name = f"check/{label}"
    adapter = await trainer.init_adapter(name, LoraSpec(rank=args.rank, alpha=args.alpha))
    student = Student(model_dir, adapter.lora)
    result, started = RunResult(label), time.perf_counter()
    _, files = await storage.read_version(name, 1)
    student.load(files)
    result.p_k.append(student.p_k())
    result.drift.append(student.drift())
    print(f"{label:>22} job  0  p(K)={result.p_k[0]:.4f}  drift={result.drift[0]:.4f}", flush=True)
    config = {
        "steps": args.steps,
        "learning_rate": args.lr,
        "alpha": args.loss_alpha,
        "top_k": args.top_k,
        "contrastive": contrastive,
    }
    for number in range(1, args.jobs + 1):
        prompts = [TRAIN_PROMPTS[(number * args.rollouts + i) % len(TRAIN_PROMPTS)] for i in range(args.rollouts)]
        samples = [
            student.rollout(q, feedback, args.max_new_tokens, args.seed * 1000 + number * 10 + i)
            for i, q in enumerate(prompts)
        ]
        job = await trainer.submit_job(name, samples, config, "")
        final = [view async for view in trainer.watch_job(job.job_id)][-1]
        if final.state is not JobState.SUCCEEDED:
            raise SystemExit(f"{label} job {number} failed: {final.error}")
        _, files = await storage.read_version(name, final.new_version)
        student.load(files)
        result.p_k.append(student.p_k())
        result.drift.append(student.drift())
        m = final.metrics[-1]
        print(
            f"{label:>22} job {number:2d}  p(K)={result.p_k[-1]:.4f}  drift={result.drift[-1]:.4f}  "
            f"loss={m.loss:.4f}  gap={m.teacher_student_gap:+.3f}  grad={m.grad_norm:.2e}  tokens={m.tokens}",
            flush=True,
        )
    result.answers = student.answers()
    result.seconds = time.perf_counter() - started
    return result


async def main(args) -> None:
    configure_logging("console", "warning")
    torch.manual_seed(args.seed)
    model_dir = resolve_base_model("smollm2-135m")
    with tempfile.TemporaryDirectory(prefix="claas-learning-") as tmp:
        storage_server, storage_ready, _ = build_storage(StorageSettings(port=0, store_url=str(Path(tmp) / "store")))
        storage_port = await storage_server.start()
        await storage_ready()
        storage_addr = f"127.0.0.1:{storage_port}"
        teacher_server, teacher_ready, teacher_stop = build_teacher(
            TeacherSettings(port=0, storage_addr=storage_addr, adapter_dir=Path(tmp) / "teacher")
        )
        teacher_port = await teacher_server.start()
        await teacher_ready()
        settings = TrainerSettings(
            port=0, storage_addr=storage_addr, teacher_addr=f"127.0.0.1:{teacher_port}", seed=args.seed
        )
        trainer_server, trainer_ready, trainer_stop = build_trainer(settings)
        trainer_port = await trainer_server.start()
        await trainer_ready()
        trainer = TrainerClient.connect(f"127.0.0.1:{trainer_port}")
        storage = StorageClient.connect(storage_addr)
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.contrastive]
        results = []
        try:
            for contrastive in modes:
                suffix = "contrastive" if contrastive else "plain"
                for kind, feedback in (("real", FEEDBACK), ("control", args.control)):
                    if args.only not in ("both", kind):
                        continue
                    results.append(
                        await run_one(f"{kind}-{suffix}", feedback, contrastive, args, trainer, storage, model_dir)
                    )
        finally:
            await storage.close()
            await trainer.close()
            for server, stop in (
                (trainer_server, trainer_stop),
                (teacher_server, teacher_stop),
                (storage_server, None),
            ):
                await server.stop()
                if stop is not None:
                    await stop()
    report(results, args)


def report(results: list[RunResult], args) -> None:
    print("\nrun                     p(K) start -> end   ratio   drift  degenerate  minutes")
    for r in results:
        s = r.summary()
        figures = f"{s['p_k_start']:.4f} -> {s['p_k_end']:.4f}  {s['ratio']:5.2f}x  {s['drift_end']:.4f}"
        print(f"{r.label:<22} {figures}  {s['degenerate']!s:<10}  {r.seconds / 60:.1f}")
        for answer in s["answers"]:
            print(f"    greedy: {answer[:100]!r}")
    by = {r.label: r.summary() for r in results}
    for suffix in ("plain", "contrastive"):
        real, control = by.get(f"real-{suffix}"), by.get(f"control-{suffix}")
        if real and control:
            ok = real["ratio"] >= 3 and control["ratio"] <= 1.5 and max(real["drift_end"], control["drift_end"]) <= 0.1
            verdict = "PASS" if ok else "MISS"
            print(
                f"{suffix}: real {real['ratio']:.2f}x vs control {control['ratio']:.2f}x -> {verdict} (3x / 1.5x / 0.1)"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps([r.summary() | {"p_k": r.p_k, "drift": r.drift} for r in results], indent=2)
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12, help="jobs per run (one SDPO update each)")
    parser.add_argument("--rollouts", type=int, default=4, help="on-policy rollouts per job")
    parser.add_argument("--steps", type=int, default=1, help="SDPO steps per job")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--loss-alpha", type=float, default=0.0, help="alpha of the JSD loss (0: forward KL)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32, help="LoRA alpha")
    parser.add_argument("--contrastive", choices=["off", "on", "both"], default="both")
    parser.add_argument(
        "--control",
        default=CONTROL,
        help="unrelated feedback of the control runs; the default equals the contrastive neutral follow-up, "
        "which makes the contrastive control trivially zero: pass another text to test the gate itself",
    )
    parser.add_argument("--only", choices=["real", "control", "both"], default="both", help="runs to make")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

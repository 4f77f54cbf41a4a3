"""Does feedback teach a name, whole? The identity check of DESIGN.md §5.1 through the real services.

Storage (a temporary folder), the hf teacher and the trainer run in this process and are called over gRPC, as
the proxy calls them. Per name, two fresh adapters get ``--jobs`` jobs each, one with the real feedback ("Your
name is <name>, always introduce yourself as <name>.") and one with the unrelated control follow-up; each job
carries ``--rollouts`` on-policy rollouts (temperature 1) sampled from the adapter's current version and the
trainer's default SDPO config unless ``--config`` overrides it. After the last job the script reads, per run:

* the exact-word pass count: greedy answers to 4 held-out prompts that say the name as a word (not "Kuroshi");
* degenerate answers among them (``services.common.degeneration``);
* the whole-name probability: p(every token of " <name>") right after "I'm" / "Hi, I'm" / "My name is",
  teacher-forced, start and end;
* the drift: mean per-token KL(base || adapted) on the base model's greedy answers to neutral prompts.

It judges the way the issue asks: real >= 3 of 4, whole name >= 10x, 0 degenerate; control 0 of 4, whole name
<= 1.5x, drift <= 0.1, 0 degenerate. About 8 minutes per name on 2 CPU cores.

    python scripts/learning_check.py [--names Kuro,Milo] [--jobs 5] [--config '{"guided_rollouts": 0}']

Sampling uses the script's own copy of the model (base + the version's LoRA weights), not vLLM, so the check
needs no vLLM server; the rollouts are the exact ids and log-probs of that copy, as the proxy would record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.cli.preferences import CONTROL_FEEDBACK, SYSTEM_PROMPT
from services.common.degeneration import degenerate
from services.common.domain import LoraSpec, Message
from services.common.logs import configure_logging
from services.common.model import resolve_base_model
from services.common.server import serving
from services.storage.client import StorageClient
from services.storage.server import build_server as build_storage
from services.storage.settings import StorageSettings
from services.teacher.prompts import render_prompt
from services.teacher.server import build_server as build_teacher
from services.teacher.settings import TeacherSettings
from services.trainer.client import TrainerClient
from services.trainer.domain import JobState, Sample
from services.trainer.server import build_server as build_trainer
from services.trainer.settings import TrainerSettings

TRAIN_PROMPTS = ["Who are you?", "Introduce yourself.", "What should I call you?", "Tell me about yourself."]
HELD_OUT = [
    "What is your name?",
    "Hi! Who am I talking to?",
    "Please introduce yourself briefly.",
    "Hello! Please introduce yourself.",
]
NAME_SLOTS = [("What is your name?", "I'm"), ("Hi! Who am I talking to?", "Hi, I'm"),
              ("Please introduce yourself briefly.", "My name is")]  # fmt: skip
NEUTRAL = [
    "What is the capital of France?",
    "Give me one tip for staying focused.",
    "How many legs does a spider have?",
    "Write a haiku about rain.",
]


def feedback_for(name: str) -> str:
    return f"Your name is {name}, always introduce yourself as {name}."


class Student:
    """The script's own copy of base + LoRA: samples rollouts and measures the adapter's versions."""

    def __init__(self, model_dir: str, lora: LoraSpec, name: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.target_modules))
        self.model = get_peft_model(base, config).eval()
        self.eos = self.tokenizer.eos_token_id
        self.name_ids = self.tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        self._neutral = [(self.chat(q), self._generate(self.chat(q), 48, base=True)) for q in NEUTRAL]

    def chat(self, question: str) -> list[int]:
        return render_prompt(self.tokenizer, [{"role": "system", "content": SYSTEM_PROMPT},
                                              {"role": "user", "content": question}])[1]  # fmt: skip

    def load(self, files: dict[str, bytes]) -> None:
        set_peft_model_state_dict(self.model, safetensors.torch.load(files["adapter_model.safetensors"]))

    @torch.no_grad()
    def _generate(self, prompt: list[int], max_new: int, *, base: bool = False, seed: int | None = None) -> list[int]:
        sampling = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0} if seed is not None else {}
        if seed is not None:
            torch.manual_seed(seed)
        with self.model.disable_adapter() if base else contextlib.nullcontext():
            out = self.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=max_new,
                                      pad_token_id=self.eos, **({"do_sample": False} | sampling))  # fmt: skip
        out = out[0, len(prompt) :].tolist()
        return out[: out.index(self.eos) + 1] if self.eos in out else out

    @torch.no_grad()
    def _logprobs(self, prompt: list[int], response: list[int]) -> list[float]:
        logits = self.model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        return logits.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0].tolist()

    def rollout(self, question: str, feedback: str, seed: int) -> Sample:
        prompt = self.chat(question)
        response = self._generate(prompt, 40, seed=seed)
        return Sample(
            completion_id=f"cmpl-{seed}",
            messages=(Message("system", SYSTEM_PROMPT), Message("user", question)),
            prompt_ids=tuple(prompt),
            response_ids=tuple(response),
            sampled_logprobs=tuple(self._logprobs(prompt, response)),
            feedback=feedback,
        )

    def whole_name(self) -> float:
        """Mean p(" <name>", all of its tokens) right after each name slot."""
        values = []
        for question, slot in NAME_SLOTS:
            context = self.chat(question) + self.tokenizer(slot, add_special_tokens=False)["input_ids"]
            values.append(math.exp(sum(self._logprobs(context, self.name_ids))))
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
        return [self.tokenizer.decode(self._generate(self.chat(q), 60), skip_special_tokens=True) for q in HELD_OUT]


@dataclass
class RunResult:
    name: str
    kind: str
    passed: int
    degenerate: int
    whole_start: float
    whole_end: float
    drift: float
    answers: list[str]
    failed_jobs: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.whole_end / self.whole_start

    def ok(self) -> bool:
        if self.kind == "real":
            return self.passed >= 3 and self.ratio >= 10 and self.degenerate == 0
        return self.passed == 0 and self.ratio <= 1.5 and self.drift <= 0.1 and self.degenerate == 0


async def run_one(name: str, kind: str, feedback: str, args, trainer: TrainerClient, storage, model_dir: str):
    adapter_name = f"check/{name.lower()}-{kind}-{time.time_ns()}"
    adapter = await trainer.init_adapter(adapter_name, LoraSpec(rank=16, alpha=32))
    student = Student(model_dir, adapter.lora, name)
    _, files = await storage.read_version(adapter_name, 1)
    student.load(files)
    start, started, failed = student.whole_name(), time.perf_counter(), 0
    for job_no in range(1, args.jobs + 1):
        samples = [
            student.rollout(TRAIN_PROMPTS[(job_no + i) % len(TRAIN_PROMPTS)], feedback, 1000 * job_no + i)
            for i in range(args.rollouts)
        ]
        job = await trainer.submit_job(adapter_name, samples, args.config, "")
        final = [view async for view in trainer.watch_job(job.job_id)][-1]
        if final.state is not JobState.SUCCEEDED:  # e.g. the commit guard kept the version off the head
            failed += 1
            print(f"{name:>10} {kind:<7} job {job_no}  {final.error}")
        _, files = await storage.read_version(adapter_name, 0)  # the head, whichever it is now
        student.load(files)
        print(f"{name:>10} {kind:<7} job {job_no}  whole name {student.whole_name():.2e}  drift {student.drift():.4f}")
    answers = student.answers()
    word = re.compile(rf"\b{re.escape(name)}\b", re.IGNORECASE)
    return RunResult(
        name=name,
        kind=kind,
        passed=sum(bool(word.search(a)) for a in answers),
        degenerate=sum(degenerate(a) for a in answers),
        whole_start=start,
        whole_end=student.whole_name(),
        drift=student.drift(),
        answers=answers,
        failed_jobs=failed,
        seconds=time.perf_counter() - started,
    )


async def main(args) -> None:
    configure_logging("console", "warning")
    model_dir = resolve_base_model("smollm2-135m")
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="claas-learning-") as tmp:
        async with serving(build_storage(StorageSettings(port=0, store_url=str(Path(tmp) / "store")))) as store:
            storage_addr = f"127.0.0.1:{store.port}"
            teacher_settings = TeacherSettings(port=0, storage_addr=storage_addr, adapter_dir=Path(tmp) / "teacher")
            async with serving(build_teacher(teacher_settings)) as teacher:
                settings = TrainerSettings(
                    port=0,
                    storage_addr=storage_addr,
                    teacher_addr=f"127.0.0.1:{teacher.port}",
                    seed=args.seed,
                    store_url=str(Path(tmp) / "store"),
                )
                async with serving(build_trainer(settings)) as trainer_server:
                    trainer = TrainerClient.connect(f"127.0.0.1:{trainer_server.port}")
                    storage = StorageClient.connect(storage_addr)
                    try:
                        for name in args.names.split(","):
                            for kind, feedback in (("real", feedback_for(name)), ("control", args.control)):
                                if kind not in args.runs.split(","):
                                    continue
                                result = await run_one(name, kind, feedback, args, trainer, storage, model_dir)
                                results.append(result)
                                print_result(result)  # the answers as soon as each run ends
                    finally:
                        await trainer.close()
                        await storage.close()
    report(results, args)


HEADER = "name       run      pass  whole name start -> end   ratio     drift   degenerate  failed jobs  verdict"


def print_result(r: RunResult) -> None:
    figures = f"{r.whole_start:.2e} -> {r.whole_end:.2e}  {r.ratio:8.1f}x  {r.drift:.4f}"
    verdict = "ok" if r.ok() else "MISS"
    counts = f"{r.degenerate}           {r.failed_jobs}"
    print(f"{r.name:<10} {r.kind:<8} {r.passed}/{len(r.answers)}   {figures}   {counts}            {verdict}")
    for answer in r.answers:
        print(f"    {answer[:110]!r}")


def report(results: list[RunResult], args) -> None:
    print("\n" + HEADER)
    for r in results:
        print_result(r)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"ratio": r.ratio} for r in results], indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default="Kuro", help="comma-separated names to teach, one pair of runs each")
    parser.add_argument("--jobs", type=int, default=5, help="jobs (rounds of feedback) per run")
    parser.add_argument("--rollouts", type=int, default=4, help="on-policy rollouts per job")
    parser.add_argument("--config", type=json.loads, default=None, help="SDPO overrides as JSON (default: none)")
    parser.add_argument("--control", default=CONTROL_FEEDBACK, help="the unrelated feedback of the control runs")
    parser.add_argument("--runs", default="real,control", help="which runs per name: real, control or both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

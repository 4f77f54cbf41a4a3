"""`claas demo`: the main job. A user's feedback, round after round, becomes better adapter versions.

Runs on a running local stack (or starts one and stops it afterwards), entirely through the proxy's
public gRPC API like any user; only the measurement loads the exported adapter locally.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from services.cli.client_cmds import export_version
from services.cli.connection import ProxySession, connection
from services.cli.output import fail
from services.cli.preferences import CONTROL_FEEDBACK, PREFERENCES, SYSTEM_PROMPT, Preference
from services.cli.stack import Stack, StackError, stack_running
from services.cli.up_cmd import add_stack_arguments, stack_config
from services.common.degeneration import degenerate
from services.common.domain import LoraSpec, Message
from services.common.model import resolve_base_model
from services.proxy.domain import ChatRequest, ChatResult, Sampling
from services.proxy.openai.objects import state_name
from services.trainer.domain import JobState, JobView
from services.trainer.guard import rejected_by_guard


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="teach an adapter a preference through feedback and measure the change")
    demo.add_argument("--preference", choices=sorted(PREFERENCES), default="identity")
    demo.add_argument("--feedback", default=None, help="any feedback text (default: the preference's own)")
    demo.add_argument("--rounds", type=int, default=5, help="rounds of chat -> feedback")
    demo.add_argument("--rollouts", type=int, default=4, help="chats per round that the feedback is given on")
    # The SDPO knobs default to None: the trainer's own defaults then apply, the same as for any user.
    demo.add_argument("--steps", type=int, default=None, help="SDPO steps per feedback (default: the trainer's)")
    demo.add_argument("--lr", type=float, default=None, help="learning rate (default: the trainer's)")
    demo.add_argument("--alpha", type=float, default=None, help="0 = KL(teacher||student) (default: the trainer's)")
    demo.add_argument(
        "--contrastive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="subtract the teacher's shift under a neutral follow-up (default: the trainer's, on with an hf teacher)",
    )
    demo.add_argument(
        "--guided", type=int, default=None, help="teacher-guided rollouts per sample (default: the trainer's)"
    )
    demo.add_argument("--max-tokens", type=int, default=40, help="length of the rollouts")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the unrelated-feedback control, to judge real minus control (on by default)",
    )
    demo.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    demo.add_argument("--proxy", default=None, help="proxy gRPC address (default: the local stack)")
    demo.add_argument("--api-key", default=None)
    demo.add_argument("--timeout", type=float, default=900.0)
    add_stack_arguments(demo)
    demo.set_defaults(func=_demo)


@dataclass
class Run:
    """One adapter taught one feedback text."""

    adapter: str
    feedback: str
    versions: list[int] = field(default_factory=list)
    #: Rounds whose version the commit guard kept off the head.
    rejected: int = 0
    baseline: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)


class DemoClient:
    """The proxy's public API, as the demo uses it (one session, one channel, for the whole demo)."""

    def __init__(self, session: ProxySession) -> None:
        self.session = session

    def create(self, name: str) -> str:
        lora = LoraSpec(rank=16, alpha=32)
        return self.session(lambda client: client.adapters.create(name, lora)).name

    def chat(self, model: str, prompt: str, *, temperature: float, max_tokens: int, seed: int) -> ChatResult:
        messages = (Message("system", SYSTEM_PROMPT), Message("user", prompt))
        request = ChatRequest(model, messages, Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed))
        return self.session(lambda client: client.inference.chat(request))

    def give_feedback(self, completion_ids: list[str], text: str, config: dict[str, object]) -> JobView:
        return self.session(lambda client: client.feedback.submit(completion_ids, text, config, wait=True))

    def export(self, name: str, dest: Path) -> int:
        return export_version(self.session, name, 0, dest).version


def _evaluate(client: DemoClient, prober, preference: Preference, adapter: str, show: bool) -> dict:
    answers = [
        client.chat(adapter, prompt, temperature=0.0, max_tokens=60, seed=0).text for prompt in preference.held_out
    ]
    if show:
        for prompt, answer in zip(preference.held_out, answers, strict=True):
            print(f"  Q: {prompt}\n  A: {answer.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        version = client.export(adapter, Path(tmp))
        signal = prober.signal(preference, Path(tmp))
    passed = sum(preference.passes(a) for a in answers)
    return {
        "version": version,
        "pass_rate": passed / len(answers),
        "signal": signal,
        "degenerate_rate": sum(map(degenerate, answers)) / len(answers),
        "answers": answers,
    }


def _teach(client: DemoClient, prober, preference: Preference, run: Run, args: argparse.Namespace, label: str) -> None:
    rng = random.Random(args.seed)
    asked = {
        "steps": args.steps,
        "learning_rate": args.lr,
        "alpha": args.alpha,
        "contrastive": args.contrastive,
        "guided_rollouts": args.guided,
    }
    config = {name: value for name, value in asked.items() if value is not None}
    print(f"\n[{label}] {run.adapter} before feedback:")
    run.baseline = _evaluate(client, prober, preference, run.adapter, show=True)
    for round_no in tqdm(range(args.rounds), desc=f"{label} rounds", unit="round"):
        completion_ids = []
        for i in range(args.rollouts):
            prompt = rng.choice(preference.probe_prompts)
            reply = client.chat(
                run.adapter,
                prompt,
                temperature=1.0,
                max_tokens=args.max_tokens,
                seed=args.seed * 1000 + round_no * 10 + i,
            )
            completion_ids.append(reply.completion_id)
        job = client.give_feedback(completion_ids, run.feedback, config)
        if job.state is not JobState.SUCCEEDED and rejected_by_guard(job.error):
            # The adapter keeps serving the version it had; the next round teaches from there.
            tqdm.write(f"[{label}] round {round_no + 1}: {job.error}")
            run.rejected += 1
            continue
        if job.state is not JobState.SUCCEEDED:
            raise RuntimeError(f"feedback job {job.job_id} ended {state_name(job.state)}: {job.error}")
        run.versions.append(job.new_version)
    head = run.versions[-1] if run.versions else 1
    print(f"\n[{label}] {run.adapter} after {args.rounds} rounds (v{head}, {run.rejected} kept off the head):")
    run.final = _evaluate(client, prober, preference, run.adapter, show=True)


def _summary(run: Run) -> dict:
    keep = ("pass_rate", "signal", "degenerate_rate")
    return {
        "adapter": run.adapter,
        "feedback": run.feedback,
        "versions": run.versions,
        "rejected_by_guard": run.rejected,
        "baseline": {k: run.baseline[k] for k in keep},
        "final": {k: run.final[k] for k in keep},
    }


def _demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    stack = None
    if not args.proxy and not stack_running(args.data_dir):
        stack = Stack(stack_config(args), on_event=lambda role, what: print(f"  {role:<8} {what}", flush=True))
        print("no running stack: starting one (`claas up` keeps one running between demos)")
        try:
            stack.up()
        except StackError as exc:
            stack.down()
            return fail(str(exc))
    try:
        return _run_demo(args, started)
    finally:
        if stack is not None:
            stack.down()


def _run_demo(args: argparse.Namespace, started: float) -> int:
    preference = PREFERENCES[args.preference]
    with connection(args).session() as session:
        return _run_session(args, started, preference, DemoClient(session))


def _run_session(args: argparse.Namespace, started: float, preference: Preference, client: DemoClient) -> int:
    from services.cli.probes import Prober  # torch: only once the demo really runs

    stack_file = args.data_dir / "stack.json"
    model = json.loads(stack_file.read_text())["base_model_path"] if stack_file.exists() else args.model
    prober = Prober(resolve_base_model(model))
    stamp = time.strftime("%H%M%S")
    runs = {"real": Run(client.create(f"demo-{stamp}"), args.feedback or preference.feedback)}
    if args.control:
        runs["control"] = Run(client.create(f"demo-{stamp}-control"), CONTROL_FEEDBACK)
    for label, run in runs.items():
        _teach(client, prober, preference, run, args, label)
    real = _summary(runs["real"])
    result = {"preference": preference.name, **real, "seconds": round(time.monotonic() - started, 1)}
    print(f"\n{preference.name}: pass rate {real['baseline']['pass_rate']:.2f} -> {real['final']['pass_rate']:.2f}, "
          f"signal {real['baseline']['signal']:.4f} -> {real['final']['signal']:.4f}, "
          f"degenerate answers {real['final']['degenerate_rate']:.2f}")  # fmt: skip
    if "control" in runs:
        control = _summary(runs["control"])
        result["control"] = {
            **control,
            "real_minus_control": {k: real["final"][k] - control["final"][k] for k in ("pass_rate", "signal")},
        }
        delta = result["control"]["real_minus_control"]
        print(
            f"control ({CONTROL_FEEDBACK!r}): pass rate {control['baseline']['pass_rate']:.2f} -> "
            f"{control['final']['pass_rate']:.2f}, signal {control['baseline']['signal']:.4f} -> "
            f"{control['final']['signal']:.4f}, degenerate answers {control['final']['degenerate_rate']:.2f}"
        )
        print(f"real minus control: pass rate {delta['pass_rate']:+.2f}, signal {delta['signal']:+.4f}")  # fmt: skip
    if args.json:
        print(json.dumps(result))
    return 0

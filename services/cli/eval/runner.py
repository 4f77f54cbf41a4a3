"""The run: per preference, steps of rollouts -> feedback (waited for) -> measurement, for the real feedback
and, beside it on a second adapter, the unrelated control feedback. Resumes from ``steps.jsonl``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from services.cli.eval.api import Api
from services.cli.eval.config import RunConfig
from services.cli.eval.judge import Judge
from services.cli.eval.measure import Measurer, against_baseline
from services.cli.eval.preferences import Preference
from services.cli.eval.rundir import ARMS, RunDir, adapter_names, check_same_run, last_versions, pending
from services.trainer.guard import rejected_by_guard

#: Step metrics of the trainer, averaged over a version's SDPO steps (from the version's lineage).
SDPO_KEYS = {"loss": "sdpo_loss", "grad_norm": "sdpo_grad_norm", "mean_is_ratio": "sdpo_is_ratio",
             "teacher_student_gap": "sdpo_gap", "kl": "sdpo_kl"}  # fmt: skip


class RunError(RuntimeError):
    """The run cannot go on (a feedback job failed, say); what is recorded so far stays valid."""


class Runner:
    """Runs (or resumes) the eval of ``preferences`` in ``run_dir``."""

    def __init__(
        self,
        api: Api,
        config: RunConfig,
        preferences: list[Preference],
        run_dir: RunDir,
        *,
        proxy: str,
        say: Callable[[str], None] = print,
        judge: Judge | None = None,
    ) -> None:
        self.api, self.config, self.preferences, self.dir = api, config, preferences, run_dir
        self.proxy, self.say, self.judge = proxy, say, judge

    def metadata(self) -> dict[str, Any]:
        """The stored metadata (a resumed run), or new metadata with fresh adapter names."""
        stored = self.dir.read_json(self.dir.metadata_path)
        if stored is not None:
            check_same_run(stored["config"], self.config)
            stored["config"] = self.config.model_dump(mode="json")
            self.say(f"resuming the run in {self.dir.path}")
        else:
            run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
            stored = {
                "run_id": run_id,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "proxy": self.proxy,
                "config": self.config.model_dump(mode="json"),
                "preferences": {p.name: p.model_dump(mode="json") for p in self.preferences},
                "adapters": adapter_names(run_id, [p.name for p in self.preferences]),
            }
        self.dir.write_json(self.dir.metadata_path, stored)
        return stored

    def _ensure_adapter(self, name: str) -> None:
        """Create the adapter unless it exists (a run that died right after creating it)."""
        existing = {a["name"].split("/", 1)[-1] for a in self.api.list_adapters()}
        if name not in existing:
            self.api.create_adapter(name, self.config.lora.model_dump())

    def _align(self, adapter: str, version: int) -> None:
        """Put the head back at the last recorded version: a step that died after its feedback is redone."""
        head = self.api.adapter(adapter)["head_version"]
        if head != version:
            self.say(f"  {adapter}: head v{head} was not recorded; rolling back to v{version}")
            self.api.rollback(adapter, version)

    def baseline(self, preference: Preference, adapters: dict[str, str]) -> dict[str, Any]:
        baselines = self.dir.read_json(self.dir.baseline_path) or {}
        if preference.name in baselines:
            return baselines[preference.name]
        for arm in ARMS:
            self._align(adapters[arm], 1)
        self.say(f"{preference.name}: measuring the baseline (v1, the base model's answers)")
        measured = Measurer(self.api, self.config, preference).measure(adapters["real"])
        metrics, _ = against_baseline(measured["metrics"], measured["metrics"], self.config)
        if self.judge is not None:
            metrics["judge_win_rate"] = 0.5  # the baseline against itself
        baselines[preference.name] = {"version": 1, "metrics": metrics, "answers": measured["answers"]}
        self.dir.write_json(self.dir.baseline_path, baselines)
        return baselines[preference.name]

    def _rollouts(self, preference: Preference, adapter: str, step: int) -> list[str]:
        """Sampled chats on the preference's prompts; the same prompts and seeds for both arms."""
        prompts = preference.probe_prompts
        ids = []
        for i in range(self.config.rollouts_per_step):
            index = (step - 1) * self.config.rollouts_per_step + i
            messages = [{"role": "system", "content": self.config.system_prompt},
                        {"role": "user", "content": prompts[index % len(prompts)]}]  # fmt: skip
            reply = self.api.chat(
                adapter,
                messages,
                temperature=self.config.rollout_temperature,
                max_tokens=self.config.rollout_max_tokens,
                seed=self.config.seed * 100_000 + index,
            )
            ids.append(reply.completion_id)
        return ids

    def _sdpo(self, adapter: str, job_id: str) -> dict[str, float]:
        """The training metrics of the version a job made, kept off the head by the guard or not: the steps
        ran either way, and a rejected step's loss is what a reader looks at first."""
        found = [v for v in self.api.versions(adapter) if v["lineage"].get("job_id") == job_id]
        steps = found[0]["lineage"]["metrics"] if found else []
        if not steps:
            return {}
        return {ours: sum(s[key] for s in steps) / len(steps) for key, ours in SDPO_KEYS.items()}

    def arm_step(
        self, preference: Preference, arm: str, adapter: str, step: int, version: int, baseline: dict[str, Any]
    ) -> dict[str, Any]:
        """One arm's step: rollouts, feedback, measurement of the new version."""
        self._align(adapter, version)
        feedback = preference.feedback if arm == "real" else self.config.control_feedback
        ids = self._rollouts(preference, adapter, step)
        job = self.api.feedback(ids, feedback, self.config.sdpo.overrides())
        rejected = job["state"] != "JOB_STATE_SUCCEEDED" and rejected_by_guard(job["error"])
        if job["state"] != "JOB_STATE_SUCCEEDED" and not rejected:
            raise RunError(f"{adapter}: feedback job {job['job_id']} ended {job['state']}: {job['error']}")
        if rejected:  # the head stayed where it was: the step measures it again and says so
            self.say(f"  {adapter}: {job['error']}")
            job = {**job, "new_version": version}
        measured = Measurer(self.api, self.config, preference).measure(adapter)
        metrics, alerts = against_baseline(measured["metrics"], baseline["metrics"], self.config)
        metrics["guard_rejected"] = float(rejected)
        metrics |= self._sdpo(adapter, job["job_id"])
        if self.judge is not None:
            before = baseline["answers"]["held_out"]
            metrics["judge_win_rate"] = self.judge.win_rate(
                preference.feedback, preference.held_out, before, measured["answers"]["held_out"]
            )
        return {"version": job["new_version"], "job_id": job["job_id"], "metrics": metrics, "alerts": alerts,
                "answers": measured["answers"]}  # fmt: skip

    def run(self) -> dict[str, Any]:
        """Every pending step; returns the metadata. Each finished step is on disk before the next starts."""
        meta = self.metadata()
        records = self.dir.read_steps()
        for preference in self.preferences:
            adapters = meta["adapters"][preference.name]
            for arm in ARMS:
                self._ensure_adapter(adapters[arm])
            baseline = self.baseline(preference, adapters)
            todo = [step for name, step in pending(self.config, [preference.name], records)]
            done = self.config.steps - len(todo)
            bar = tqdm(total=self.config.steps, initial=done, desc=preference.name, unit="step", leave=False)
            for step in todo:
                versions = last_versions(records, preference.name)
                record: dict[str, Any] = {"preference": preference.name, "step": step}
                for arm in ARMS:
                    record[arm] = self.arm_step(preference, arm, adapters[arm], step, versions[arm], baseline)
                    self.say(step_line(preference.name, step, self.config.steps, arm, record[arm]))
                self.dir.append_step(record)
                records.append(record)
                self.say(f"{preference.name} step {step}/{self.config.steps} recorded in {self.dir.steps_path.name}")
                bar.update(1)
            bar.close()
        return meta


def step_line(preference: str, step: int, steps: int, arm: str, result: dict[str, Any]) -> str:
    """One arm's step as a progress line."""
    m = result["metrics"]
    parts = [f"margin {m['margin']:+.2f}", f"compliance {m['compliance']:.2f}"]
    if "decision_p" in m:
        parts.append(f"decision p {m['decision_p']:.3g}")
    if "general_score" in m:
        parts.append(f"general {m['general_score']:.2f}")
    parts += [f"entropy {m['entropy']:.2f}", f"self-ROUGE-L {m['self_rouge_l']:.2f}", f"drift {m['drift']:.2f}"]
    line = f"{preference} step {step}/{steps} {arm:<7} v{result['version']}: " + ", ".join(parts)
    return line + (f"  COLLAPSE ALERT: {'; '.join(result['alerts'])}" if result["alerts"] else "")

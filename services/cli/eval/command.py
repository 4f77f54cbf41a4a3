"""`claas eval`: teach each preference on a real and a control adapter and measure every step.

Talks to the proxy's public HTTP API only: the local stack by default (started for the run if none is
running, like `claas demo`), any deployment with ``--proxy URL --api-key KEY``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from services.cli.eval.api import Api, ApiError
from services.cli.eval.config import ConfigError, RunConfig, describe, load_config
from services.cli.eval.judge import Judge, JudgeError
from services.cli.eval.plots import write_plots
from services.cli.eval.preferences import Preference, PreferenceError, load
from services.cli.eval.report import summarize, table
from services.cli.eval.rundir import RunDir
from services.cli.eval.runner import RunError, Runner
from services.cli.output import fail
from services.cli.stack import Stack, StackError, read_stack_file, stack_running
from services.cli.up_cmd import add_stack_arguments, stack_config

RESUME_HINT = "run the same command again: it continues after the last finished step"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="measure what feedback taught: steps of feedback per preference, beside an unrelated-feedback control",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=2 sdpo.steps=1")
    parser.add_argument(
        "-p", "--preference", action="append", default=None, help="identity, concise, no_emoji or a YAML file (repeat)"
    )
    parser.add_argument("--config", type=Path, default=None, help="run configuration (YAML)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: eval-runs/<preferences>)")
    parser.add_argument("--proxy", default=None, help="the proxy's HTTP URL (default: the local stack's)")
    parser.add_argument("--api-key", default=None, help="API key (env CLAAS_API_KEY; default: the local stack's)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before one call gives up")
    parser.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    parser.add_argument(
        "--publish", action="store_true", help="upload the finished run to the proxy, for its dashboard's Evals page"
    )
    add_stack_arguments(parser)
    parser.set_defaults(func=_eval)


def _settings(args: argparse.Namespace) -> tuple[RunConfig, list[Preference]]:
    overrides = list(args.overrides)
    if args.preference:
        overrides.insert(0, f"preferences={json.dumps(args.preference)}")
    config = load_config(args.config, overrides)
    preferences = [load(spec) for spec in config.preferences]
    names = [p.name for p in preferences]
    if len(set(names)) != len(names):
        raise ConfigError(f"preferences: a name appears twice ({', '.join(names)})")
    return config, preferences


@contextlib.contextmanager
def _proxy(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(HTTP URL, API key): the flags, else the running local stack, else a local stack started for the run."""
    key = args.api_key or os.environ.get("CLAAS_API_KEY", "")
    if args.proxy:
        yield args.proxy, key
        return
    stack = None
    if not stack_running(args.data_dir):
        stack = Stack(stack_config(args), on_event=lambda role, what: print(f"  {role:<8} {what}", flush=True))
        print("no running stack: starting one (`claas up` keeps one running between runs)", flush=True)
        try:
            stack.up()
        except BaseException:
            stack.down()
            raise
    try:
        info = read_stack_file(args.data_dir)
        yield info["http_url"], key or info["api_key"]
    finally:
        if stack is not None:
            stack.down()


def _eval(args: argparse.Namespace) -> int:
    try:
        config, preferences = _settings(args)
    except (ConfigError, PreferenceError) as exc:
        return fail(str(exc), hint="`claas eval --help`; keys are those printed at the start of a run")
    print("configuration:\n" + describe(config), flush=True)
    run_dir = RunDir(args.out or Path("eval-runs") / "-".join(p.name for p in preferences))
    try:
        with _proxy(args) as (url, key):
            return _run(args, config, preferences, run_dir, url, key)
    except StackError as exc:
        return fail(str(exc))
    except ConfigError as exc:
        return fail(str(exc))
    except (ApiError, RunError, JudgeError) as exc:
        return fail(str(exc), hint=RESUME_HINT)
    except KeyboardInterrupt:
        return fail("interrupted", hint=RESUME_HINT, code=130)


def _run(
    args: argparse.Namespace, config: RunConfig, preferences: list[Preference], run_dir: RunDir, url: str, key: str
) -> int:
    api = Api(url, key, timeout_s=args.timeout)
    judge = Judge(config.judge) if config.judge.enabled else None
    try:
        runner = Runner(api, config, preferences, run_dir, proxy=url, judge=judge, say=_say)
        meta = runner.run()
    finally:
        api.close()
        if judge is not None:
            judge.close()
    baseline = run_dir.read_json(run_dir.baseline_path) or {}
    records = run_dir.read_steps()
    summary = summarize(meta, baseline, records)
    run_dir.write_json(run_dir.summary_path, summary)
    plots = write_plots(run_dir.path, meta, baseline, records)
    print(table(summary), flush=True)
    print(f"\nrun folder {run_dir.path}: metadata.json baseline.json steps.jsonl summary.json "
          + " ".join(p.name for p in plots), flush=True)  # fmt: skip
    if args.publish:
        publish(Api(url, key, timeout_s=args.timeout), run_dir, meta["run_id"])
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0


def publish(api: Api, run_dir: RunDir, run_id: str) -> None:
    """Upload the run's files (the dashboard shows them to the key's tenant); raises ApiError."""
    try:
        # metadata.json last: the proxy lists a run once it has one, so a run appears whole.
        for path in sorted(run_dir.run_files(), key=lambda p: p.name == "metadata.json"):
            api.publish_file(run_id, path.name, path.read_bytes())
    finally:
        api.close()
    print(f"published run {run_id}: see it under Evals on the proxy's /dashboard", flush=True)


def _say(line: str) -> None:
    print(line, flush=True)
    sys.stderr.flush()

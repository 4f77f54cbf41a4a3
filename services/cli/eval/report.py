"""summary.json: per preference and metric, the baseline, the real and the control arm after the last step,
and real - control (the only difference that claims learning, DESIGN.md §5.1)."""

from __future__ import annotations

from typing import Any

from services.cli.eval.rundir import ARMS

#: Metrics where lower is better; for the others higher is better (or neither, like entropy).
LOWER_IS_BETTER = frozenset({"degenerate_rate", "drift", "self_rouge_l", "collapse_alert", "guard_rejected"})


def _series(records: list[dict[str, Any]], preference: str) -> list[dict[str, Any]]:
    return [r for r in records if r["preference"] == preference]


def summarize(meta: dict[str, Any], baseline: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"run_id": meta["run_id"], "proxy": meta["proxy"], "preferences": {}}
    for name, adapters in meta["adapters"].items():
        steps = _series(records, name)
        base = baseline.get(name, {}).get("metrics", {})
        entry: dict[str, Any] = {"adapters": adapters, "steps_done": len(steps), "metrics": {}}
        if steps:
            last = steps[-1]
            entry["versions"] = {arm: last[arm]["version"] for arm in ARMS}
            entry["alerts"] = {arm: last[arm]["alerts"] for arm in ARMS}
            keys = sorted(set(last["real"]["metrics"]) | set(base))
            for key in keys:
                real, control = last["real"]["metrics"].get(key), last["control"]["metrics"].get(key)
                entry["metrics"][key] = {
                    "baseline": base.get(key),
                    "real": real,
                    "control": control,
                    "real_minus_control": real - control if real is not None and control is not None else None,
                }
        summary["preferences"][name] = entry
    return summary


def table(summary: dict[str, Any]) -> str:
    """The summary as a text table, one row per metric."""
    lines = []
    for name, entry in summary["preferences"].items():
        lines.append(f"\n{name} ({entry['steps_done']} steps)   baseline      real   control   real-control")
        for key, row in entry["metrics"].items():
            cells = [_cell(row[c]) for c in ("baseline", "real", "control", "real_minus_control")]
            lines.append(f"  {key:<22}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"

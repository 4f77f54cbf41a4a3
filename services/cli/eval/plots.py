"""The run's PNG plots (matplotlib, Agg: no display needed). Step 0 is the baseline; real lines are solid,
control lines dashed, one colour per preference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from services.cli.eval.rundir import ARMS

#: Each plot's file and its panels: (metric, title, alert threshold or None).
PANELS: dict[str, list[tuple[str, str, str | None]]] = {
    "margins.png": [("margin", "log-prob margin (preferred - dispreferred)", None),
                    ("margin_per_token", "margin per token", None)],
    "learning_curves.png": [("compliance", "compliance on held-out prompts", None),
                            ("decision_p", "decision-point probability (whole target)", None),
                            ("judge_win_rate", "judge win-rate vs baseline", None)],
    "collapse.png": [("entropy_ratio", "top-20 entropy / baseline", "entropy_ratio_min"),
                     ("self_rouge_l", "self-ROUGE-L of samples", "self_rouge_max"),
                     ("drift", "mean log-prob drift (nats)", "drift_max")],
    "forgetting.png": [("general_score", "general score", None), ("coding_ok", "coding probe passed", None),
                       ("instruction_pass_rate", "instruction probes", None)],
    "sdpo.png": [("sdpo_loss", "SDPO loss", None), ("sdpo_grad_norm", "grad norm", None),
                 ("sdpo_is_ratio", "importance ratio", None), ("sdpo_gap", "teacher - student gap", None)],
}  # fmt: skip
#: Metrics drawn on a log axis: a decision-point probability moves by orders of magnitude (identity 1e-5 to 0.7,
#: concise 1e-5 to 3e-3 in one run), so on a linear axis every small preference reads as a flat zero.
LOG_SCALE = frozenset({"decision_p"})


def _points(metric: str, name: str, baseline: dict[str, Any], records: list[dict[str, Any]], arm: str):
    xs, ys = [], []
    base = baseline.get(name, {}).get("metrics", {})
    if metric in base:
        xs.append(0)
        ys.append(base[metric])
    for record in records:
        if record["preference"] == name and metric in record[arm]["metrics"]:
            xs.append(record["step"])
            ys.append(record[arm]["metrics"][metric])
    return xs, ys


def _panel(ax, metric, title, threshold, config, names, baseline, records) -> None:
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plotted: list[float] = []
    for index, name in enumerate(names):
        for arm, style in zip(ARMS, ("-", "--"), strict=True):
            xs, ys = _points(metric, name, baseline, records, arm)
            if xs:
                ax.plot(xs, ys, style, marker="o", color=colours[index % len(colours)], label=f"{name} {arm}")
                plotted.extend(ys)
    # A zero cannot be drawn on a log axis: such a panel stays linear rather than hide points.
    if metric in LOG_SCALE and plotted and min(plotted) > 0:
        ax.set_yscale("log")
    if threshold is not None:
        ax.axhline(config["collapse"][threshold], color="red", linewidth=1, linestyle=":", label="alert")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def write_plots(
    folder: Path, meta: dict[str, Any], baseline: dict[str, Any], records: list[dict[str, Any]]
) -> list[Path]:
    """Every plot of PANELS into ``folder``; returns their paths."""
    names = list(meta["adapters"])
    written = []
    for filename, panels in PANELS.items():
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, (metric, title, threshold) in zip(axes[0], panels, strict=True):
            _panel(ax, metric, title, threshold, meta["config"], names, baseline, records)
        fig.suptitle(f"{filename.removesuffix('.png').replace('_', ' ')} — real (solid) vs control (dashed)")
        fig.tight_layout()
        path = folder / filename
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written

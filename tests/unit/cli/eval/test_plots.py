"""The plots of a run: every file written, each a PNG that decodes and shows something."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np

from services.cli.eval.config import load_config
from services.cli.eval.plots import _panel, write_plots
from services.common.eval_files import PLOTS


def _metrics(value: float) -> dict[str, float]:
    keys = ("margin", "margin_per_token", "compliance", "decision_p", "entropy_ratio", "self_rouge_l", "drift",
            "general_score", "coding_ok", "instruction_pass_rate", "sdpo_loss", "sdpo_grad_norm", "sdpo_is_ratio",
            "sdpo_gap")  # fmt: skip
    return {k: value for k in keys}


def test_every_plot_is_written_and_not_blank(tmp_path: Path) -> None:
    meta = {"adapters": {"identity": {}}, "config": load_config(None).model_dump(mode="json")}
    baseline = {"identity": {"metrics": _metrics(0.1)}}
    records = [
        {
            "preference": "identity",
            "step": s,
            "real": {"metrics": _metrics(0.2 * s)},
            "control": {"metrics": _metrics(0.1 * s)},
        }
        for s in (1, 2)
    ]
    paths = write_plots(tmp_path, meta, baseline, records)
    assert sorted(p.name for p in paths) == sorted(PLOTS)
    for path in paths:
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1, path.name


def _decision_panel(values: list[float]) -> str:
    meta_config = load_config(None).model_dump(mode="json")
    baseline = {"identity": {"metrics": {"decision_p": values[0]}}}
    records = [{"preference": "identity", "step": s, "real": {"metrics": {"decision_p": v}},
                "control": {"metrics": {"decision_p": values[0]}}} for s, v in enumerate(values[1:], 1)]  # fmt: skip
    fig, ax = plt.subplots()
    try:
        _panel(ax, "decision_p", "decision point", None, meta_config, ["identity"], baseline, records)
        return ax.get_yscale()
    finally:
        plt.close(fig)


def test_the_decision_point_probability_is_drawn_on_a_log_axis_unless_a_value_is_zero() -> None:
    assert _decision_panel([1.2e-5, 3e-4, 0.6]) == "log"
    assert _decision_panel([0.0, 3e-4, 0.6]) == "linear"

"""What the templates show, computed here so that templates only lay it out: step-metric charts as SVG
coordinates, short names, JSON for the expanded rows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.domain import StepMetrics

#: The chart's drawing area, in SVG user units.
WIDTH, HEIGHT, PAD = 240.0, 60.0, 4.0
#: Step metrics a version's chart draws, one line each.
CHARTED = ("loss", "grad_norm", "kl")


@dataclass(frozen=True)
class Line:
    """One metric over a version's steps: ``points`` is an SVG polyline's attribute."""

    metric: str
    points: str
    low: float
    high: float
    last: float


@dataclass(frozen=True)
class Chart:
    """The training steps of one version, each metric scaled to its own range (their units differ)."""

    steps: int
    lines: tuple[Line, ...]
    width: float = WIDTH
    height: float = HEIGHT


def step_chart(metrics: Sequence[StepMetrics]) -> Chart | None:
    """None when the version has no steps to draw (the first version, or one made without metrics)."""
    if not metrics:
        return None
    lines = []
    for metric in CHARTED:
        values = [float(getattr(m, metric)) for m in metrics]
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        step_x = (WIDTH - 2 * PAD) / max(1, len(values) - 1)
        points = " ".join(
            f"{PAD + i * step_x:.1f},{HEIGHT - PAD - (v - low) / span * (HEIGHT - 2 * PAD):.1f}"
            for i, v in enumerate(values)
        )
        lines.append(Line(metric, points, low, high, values[-1]))
    return Chart(len(metrics), tuple(lines))


def short_name(adapter: str) -> str:
    """``tenant/bot`` -> ``bot``: a page only ever shows the caller's own tenant."""
    return adapter.partition("/")[2] or adapter


def pretty_json(value: Any) -> str:
    """Dataclasses and plain values as indented JSON (escaped by the template like any text)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, list | tuple):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def number(value: Any) -> str:
    """A metric for a table cell: four significant digits (nan and inf as such), a dash for none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    try:
        return f"{value:.4g}"
    except OverflowError:  # an int too large for a float
        return ">1e308" if value > 0 else "<-1e308"


def printable(value: Any) -> Any:
    """Every value a template writes out, as it is unless it is a string that UTF-8 cannot encode (a lone
    surrogate, which JSON can spell): the page could not be sent, so such a character shows escaped."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return type(value)(value.encode(errors="backslashreplace").decode())  # Markup stays Markup
    return value

"""The shapes of a `claas eval` run's data files as the dashboard reads them (services/cli/eval/runner.py,
report.py and rundir.py write them): each file is checked against its model when published and again when
read (the operator's folder may hold anything), so a page only ever gets what it can show.

The models check what a page uses: the containers (objects, lists) and the values it shows (numbers,
strings). Keys they do not name (a run's config, the answers behind the metrics) are kept unchecked: a later
`claas eval` may add some. A number is a JSON number (not a bool, not a numeric string) that fits a float;
NaN and Infinity are allowed, as ``json.dumps`` writes them for a metric that has no value. A string must be
valid Unicode: JSON can spell a lone surrogate (``"\\ud800"``) that no page could be encoded with.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, Strict, ValidationError

from services.common.errors import InvalidArgument

#: How much of a key the message about a bad field quotes.
_QUOTED = 40


def _unicode(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("a string with a lone surrogate (not valid Unicode)") from None
    return text


Text = Annotated[str, Strict(), AfterValidator(_unicode)]
Number = Annotated[float, Strict()]
Metric = Number | None
#: Steps, versions, counts: whole numbers a run can reach.
Count = Annotated[int, Strict(), Field(ge=0, le=10**9)]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Metadata(_Shape):
    """metadata.json: the run, when it started and the real and control adapter of each preference."""

    run_id: Text
    started: Text
    adapters: dict[Text, dict[Text, Text]]


class MetricRow(_Shape):
    """One metric of a preference after the last step (None: not measured on that side)."""

    baseline: Metric = None
    real: Metric = None
    control: Metric = None
    real_minus_control: Metric = None


class PreferenceSummary(_Shape):
    steps_done: Count = 0
    metrics: dict[Text, MetricRow] = {}


class Summary(_Shape):
    """summary.json: per preference, each metric's baseline, real, control and real - control."""

    preferences: dict[Text, PreferenceSummary]


class Arm(_Shape):
    """One arm of a step: the version it made, what was measured of it and its collapse alerts."""

    version: Count
    metrics: dict[Text, Metric]
    alerts: list[Text] = []


class Step(_Shape):
    """One line of steps.jsonl: a finished (preference, step), both arms measured."""

    preference: Text
    step: Count
    real: Arm
    control: Arm


class BaselineEntry(_Shape):
    version: Count
    metrics: dict[Text, Metric]


class Baseline(RootModel[dict[Text, BaselineEntry]]):
    """baseline.json: each preference's metrics before any feedback (not shown; checked all the same)."""


SHAPES: dict[str, type[BaseModel]] = {
    "metadata.json": Metadata,
    "summary.json": Summary,
    "baseline.json": Baseline,
    "steps.jsonl": Step,
}


def parse(name: str, data: bytes) -> list[BaseModel]:
    """The file's objects in their model (one; steps.jsonl: one per line), or InvalidArgument naming the file,
    the line and the first field that is not in shape. Every line of steps.jsonl counts: a reader that
    tolerates a torn last line (a run still writing) drops it before calling this."""
    model = SHAPES[name]
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"{name} is not UTF-8 JSON: not UTF-8", param="name") from None
    if name.endswith(".jsonl"):
        # Lines end at "\n" only: str.splitlines() would also cut at a U+2028 inside a string.
        bodies = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    else:
        bodies = [(0, text)]
    found = []
    for number, body in bodies:
        where = f"{name} line {number}" if number else name
        try:
            value = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidArgument(f"{where} is not UTF-8 JSON: {reason}", param="name") from None
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where} must hold JSON objects, not {type(value).__name__}", param="name")
        try:
            found.append(model.model_validate(value))
        except ValidationError as exc:
            raise InvalidArgument(
                f"{where} is not in the shape `claas eval` writes: {_first(exc)}", param="name"
            ) from None
        except RecursionError:
            raise InvalidArgument(f"{where} is nested too deep", param="name") from None
    return found


#: What pydantic's error types mean in JSON's words (the file's author never saw our models).
_EXPECTED = {
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "list_type": "a JSON array",
    "float_type": "a JSON number that fits a float (or null where there may be none)",
    "int_type": "a whole number",
    "string_type": "a string",
}


def _first(exc: ValidationError) -> str:
    """The first bad field as ``a.b.c: what is wrong``, its keys quoted safely (they come from the file)."""
    error = exc.errors(include_url=False)[0]
    path = ".".join(_quote(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "missing":
        return f"{path}: missing"
    if error["type"] in _EXPECTED:
        return f"{path}: expected {_EXPECTED[error['type']]}, not {_json_type(error.get('input'))}"
    return f"{path}: {error['msg'].removeprefix('Value error, ')}"


def _json_type(value: Any) -> str:
    """The JSON type of a value, as the file spells it (the value itself is not quoted: it may be large)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "a whole number" if abs(value) < 2**1023 else "a number too large for a float"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _quote(part: Any) -> str:
    text = str(part).encode("ascii", "backslashreplace").decode()
    return text if len(text) <= _QUOTED else text[:_QUOTED] + "..."

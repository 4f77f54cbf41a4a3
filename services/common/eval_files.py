"""The files of a `claas eval` run, named once: the CLI writes and publishes them, the proxy keeps and shows
them, and no other name is taken."""

from __future__ import annotations

#: The run's record, in the order a reader needs them.
DATA_FILES = ("metadata.json", "summary.json", "baseline.json", "steps.jsonl")
PLOTS = ("margins.png", "learning_curves.png", "collapse.png", "forgetting.png", "sdpo.png")
RUN_FILES = DATA_FILES + PLOTS
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

"""The README documents every CLAAS_* variable the services read, as they read it."""

from __future__ import annotations

import re
from pathlib import Path

from services.cli.config_cmd import markdown_table, settings_rows

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_config_table_matches_the_code() -> None:
    text = README.read_text()
    block = re.search(r"<!-- config-table.*?-->\n(.*?)\n<!-- /config-table -->", text, re.S)
    assert block, "README lost its configuration table"
    assert block.group(1) == markdown_table(), "README's table is stale: run `claas config --markdown` and paste it"
    assert len(settings_rows()) > 40


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:800]
    assert "make run" in head and "make test" in head

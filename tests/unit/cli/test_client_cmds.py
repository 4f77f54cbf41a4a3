"""`claas chat`, `feedback` and `adapters` through the proxy's client: what they print, with and without --json,
and how a failed call ends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.cli.main import main
from tests.unit.proxy.conftest import Proxy


async def claas(proxy: Proxy, capsys: pytest.CaptureFixture[str], *argv: str, key: str = "acme") -> tuple[int, str]:
    """Run the command in a thread (it runs its own event loop) while the proxy serves in this one."""
    connection = ["--proxy", proxy.target, "--api-key", proxy.keys.get(key, key), "--timeout", "10"]
    code = await asyncio.to_thread(main, [*argv, *connection])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_chat_feedback_and_adapters_as_json(proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await claas(proxy, capsys, "chat", "Hi", "--model", "bot", "--json")
    reply = json.loads(out)
    assert code == 0 and (reply["text"], reply["adapter"], reply["version"]) == ("Hello world!", "acme/bot", 1)

    code, out = await claas(
        proxy, capsys, "feedback", reply["completion_id"], "Shorter.", "--wait", "--steps", "1", "--json"
    )
    job = json.loads(out)
    assert code == 0 and (job["state"], job["new_version"]) == ("JOB_STATE_SUCCEEDED", 2)

    code, out = await claas(proxy, capsys, "adapters", "versions", "bot", "--json")
    assert [v["version"] for v in json.loads(out)["versions"]] == [1, 2]
    code, out = await claas(proxy, capsys, "adapters", "rollback", "bot", "1", "--json")
    assert json.loads(out)["head_version"] == 1
    code, out = await claas(proxy, capsys, "adapters", "list", "--json")
    assert [a["name"] for a in json.loads(out)["adapters"]] == ["acme/bot"]


async def test_human_output_stream_and_export(proxy: Proxy, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = await claas(proxy, capsys, "chat", "Hi", "--model", "bot", "--stream")
    assert code == 0 and out.startswith("Hello world!\n-- completion cmpl-") and "(acme/bot v1)" in out

    code, out = await claas(proxy, capsys, "adapters", "create", "helper", "--rank", "4")
    assert code == 0 and out.startswith("created acme/helper  head v1  rank 4")

    code, out = await claas(proxy, capsys, "adapters", "export", "bot", "--out", str(tmp_path / "out"))
    assert code == 0 and out.startswith("v1: ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    code, out = await claas(proxy, capsys, "adapters", "delete", "helper")
    assert (code, out) == (0, "deleted\n")


async def test_a_failed_call_prints_the_status_and_a_hint(proxy: Proxy, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await claas(proxy, capsys, "adapters", "versions", "beta/secret")
    assert code == 1
    assert "error: NOT_FOUND: adapter 'beta/secret' not found" in out and "`claas adapters list`" in out

    code, out = await claas(proxy, capsys, "adapters", "list", key="wrong-key")
    assert code == 1 and "error: UNAUTHENTICATED" in out and "CLAAS_API_KEY" in out

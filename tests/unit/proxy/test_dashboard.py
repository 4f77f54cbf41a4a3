"""The dashboard in a real browser (Playwright driving Debian's Chromium) over the whole proxy: real storage,
the stand-in trainer of the proxy tests, feedback sent through the public HTTP API, eval runs published
through it. What a person does is what the tests do; each page is also checked for what must not be there
(another tenant's data, a script that ran).

Set DASHBOARD_SHOTS to a folder to keep a screenshot of every page the tests visit.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from pydantic import SecretStr

from services.cli.eval.api import Api
from services.cli.eval.command import publish
from services.cli.eval.config import load_config
from services.cli.eval.plots import write_plots
from services.cli.eval.report import summarize
from services.cli.eval.rundir import RunDir
from services.common.domain import Lineage, StepMetrics
from services.proxy.dashboard.session import COOKIE, Sessions
from services.proxy.keys import revoke_api_keys
from services.proxy.settings import ProxySettings
from services.storage.client import StorageClient
from tests.unit.proxy.conftest import Proxy, proxy_settings, running_proxy
from tests.unit.proxy.fakes import PEFT, FakeTrainer, FakeVllm, head

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = os.environ.get("DASHBOARD_SHOTS", "")
XSS = '<script>window.__pwned = 1; alert(1)</script><img src="x" onerror="window.__pwned = 2; alert(2)">'

pytestmark = pytest.mark.timeout(120)


SECRET = "a-dashboard-secret-of-32-characters-at-least"


@pytest.fixture
def settings(tmp_path: Path, keys_file: Path) -> ProxySettings:
    """The proxy tests' settings, plus a folder of eval runs and a known session secret."""
    extra = {"eval_runs_dir": tmp_path / "eval-runs", "dashboard_secret": SecretStr(SECRET)}
    return proxy_settings(tmp_path, keys_file).model_copy(update=extra)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` (part of `make setup`) installs it"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        await chromium.close()


class Visitor:
    """One browser session of a person: its page, and the dialogs any script opened (there must be none)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        #: What the browser refused under the pages' Content-Security-Policy: our own pages need nothing refused.
        self.refused: list[str] = []

        async def dismiss(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", dismiss)
        page.on("console", lambda m: self.refused.append(m.text) if "Content Security Policy" in m.text else None)

    async def sign_in(self, key: str) -> None:
        await self.page.goto("/dashboard/sign-in")
        await self.page.get_by_label("API key").fill(key)
        await self.page.get_by_role("button", name="Sign in").click()

    async def shot(self, name: str) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)

    async def nothing_ran(self) -> None:
        """No script of a payload ran: no dialog, no global set, and nothing even reached the CSP (the
        payloads were text, not markup)."""
        assert self.dialogs == []
        assert await self.page.evaluate("() => window.__pwned") is None
        assert self.refused == []


Visit = Callable[..., Awaitable[Visitor]]


@pytest.fixture
async def visit(browser: Browser, proxy: Proxy) -> AsyncIterator[Visit]:
    """``await visit("acme")``: a fresh browser context signed in as the tenant (``visit()``: signed out), on
    the proxy of the test or the one given as ``at``, with JavaScript unless ``script=False``."""
    contexts = []

    async def open_as(tenant: str = "", at: Proxy = proxy, script: bool = True) -> Visitor:
        context = await browser.new_context(base_url=at.base_url, java_script_enabled=script)
        contexts.append(context)
        visitor = Visitor(await context.new_page())
        if tenant:
            await visitor.sign_in(at.keys[tenant])
            await expect(visitor.page.get_by_role("heading", name="Adapters")).to_be_visible()
        return visitor

    yield open_as
    for context in contexts:
        await context.close()


async def feedback(proxy: Proxy, text: str, *, prompt: str = "Who are you?", wait: bool = True) -> dict[str, Any]:
    """A chat with acme's "bot" and a feedback on it, through the public HTTP API; the job as it answered."""
    auth = proxy.auth("acme")
    body = {"model": "bot", "messages": [{"role": "user", "content": prompt}]}
    chat = await proxy.http.post("/v1/chat/completions", headers=auth, json=body)
    sent = {"completion_ids": [chat.json()["id"]], "feedback": text, "wait": wait}
    answer = await proxy.http.post("/v1/feedback", headers=auth, json=sent)
    assert answer.status_code == 200, answer.text
    return answer.json()["job"]


async def test_signing_in_needs_a_good_key_and_gives_a_strict_http_only_cookie(proxy: Proxy, visit: Visit) -> None:
    visitor = await visit()
    page = visitor.page
    await page.goto("/dashboard/adapters")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await visitor.shot("sign-in")

    await page.get_by_role("button", name="Sign in").click()  # empty: the browser's own check stops it
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await visitor.sign_in("not-a-key")
    await expect(page.get_by_role("alert")).to_have_text("invalid API key")
    await visitor.shot("sign-in-refused")
    assert await page.context.cookies() == []
    missing = await page.request.post("/dashboard/sign-in", form={"api_key": ""})
    assert missing.status == 401 and COOKIE not in (missing.headers.get("set-cookie") or "")

    await visitor.sign_in(proxy.keys["acme"])
    await expect(page.get_by_role("heading", name="Adapters")).to_be_visible()
    await expect(page.get_by_text("tenant acme")).to_be_visible()
    await page.goto("/dashboard")
    await expect(page.get_by_role("heading", name="Adapters")).to_be_visible()
    assert proxy.keys["acme"] not in page.url
    [cookie] = await page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (COOKIE, True, "Strict")
    assert proxy.keys["acme"] not in cookie["value"]
    response = await page.request.get("/dashboard/adapters")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.goto("/dashboard/adapters")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


async def test_an_adapter_shows_its_versions_lineage_and_step_chart_and_rolls_back(
    proxy: Proxy, storage: StorageClient, visit: Visit
) -> None:
    job = await feedback(proxy, "Your name is Kuro.")
    metrics = tuple(StepMetrics(step=i, loss=1.0 / i, grad_norm=0.5 + i, kl=0.01 * i) for i in (1, 2, 3))
    lineage = Lineage(job_id="job-by-hand", feedback=("Shorter answers.",), metrics=metrics)
    await storage.upload_version("acme/bot", 2, dict(PEFT), lineage)
    visitor = await visit("acme")
    page = visitor.page

    await page.get_by_role("link", name="bot", exact=True).click()
    await expect(page.get_by_role("heading", name="Adapter bot")).to_be_visible()
    await expect(page.locator("#head")).to_have_text("v3")
    rows = page.locator("table.versions tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.nth(1)).to_contain_text(job["job_id"])
    await expect(rows.nth(1)).to_contain_text("Your name is Kuro.")
    await expect(rows.nth(2)).to_contain_text("Shorter answers.")
    await expect(rows.nth(2).get_by_role("img", name="step metrics of v3")).to_be_visible()
    await expect(rows.nth(2)).to_contain_text("3 steps")
    await visitor.shot("adapter")

    await page.get_by_role("button", name="Roll back to v1").click()
    await expect(page.locator("#head")).to_have_text("v1")
    assert await head(storage, "acme/bot") == 1
    await page.goto("/dashboard/adapters")
    await expect(page.get_by_role("row", name=re.compile(r"^bot v1 "))).to_be_visible()
    await visitor.shot("adapters")


async def test_the_feedback_log_expands_a_record_and_pages_through_the_rest(
    proxy: Proxy, trainer: FakeTrainer, visit: Visit
) -> None:
    for n in (1, 2, 3):
        await feedback(proxy, f"Feedback number {n}.", prompt=f"Question number {n}?")
    trainer.fail = True
    await feedback(proxy, "This one fails.")
    visitor = await visit("acme")
    page = visitor.page

    await page.goto("/dashboard/feedback?page_size=3")
    records = page.locator("details.record")
    await expect(records).to_have_count(3)
    failed = records.first
    await expect(failed).to_contain_text("failed")
    await failed.locator("summary").click()
    await expect(failed.get_by_role("heading", name="Error")).to_be_visible()
    await expect(failed.locator(".alert")).to_have_text("injected failure")
    newest = records.nth(1)
    await expect(newest).to_contain_text("succeeded")
    await expect(newest).to_contain_text("v3 → v4")
    await newest.locator("summary").click()
    await expect(newest.locator(".feedback")).to_have_text("Feedback number 3.")
    await expect(newest.locator(".message pre")).to_have_text("Question number 3?")
    await expect(newest.locator("pre.response")).to_have_text("Hello world!")
    await expect(newest.locator("pre.teacher")).to_contain_text("teacher read: Feedback number 3. / [")
    await expect(newest.locator("pre.json").first).to_contain_text('"scoring"')
    await expect(records.nth(2).locator(".feedback")).not_to_be_visible()
    await visitor.shot("feedback-log")

    await page.get_by_role("link", name="Older").click()
    await expect(records).to_have_count(1)
    await expect(records.first).to_contain_text("v1 → v2")
    await expect(page.get_by_role("link", name="Older")).to_have_count(0)
    await page.get_by_role("link", name="Newest").click()
    await expect(records).to_have_count(3)


async def test_a_running_job_is_followed_live_to_succeeded(proxy: Proxy, visit: Visit) -> None:
    job = await feedback(proxy, "Answer in French.", wait=False)
    assert job["state"] == "JOB_STATE_QUEUED"  # the stand-in trainer runs a job while it is watched
    visitor = await visit("acme")
    page = visitor.page

    await page.goto("/dashboard/feedback")
    await expect(page.locator("details.record").first).to_contain_text("queued")
    await page.locator("details.record summary").first.click()
    await page.get_by_role("link", name="follow it live").click()
    await expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
    await expect(page.locator("#job-versions")).to_have_text("v1 → v2")
    await expect(page.locator("#job-live")).to_have_text("The job has ended.")
    await expect(page.locator("#job-events li")).to_have_count(3)  # queued, scoring, succeeded
    await visitor.shot("job-live")
    assert visitor.refused == []  # the page's own script and styles pass its CSP

    await page.goto("/dashboard/feedback")
    await expect(page.locator("details.record").first).to_contain_text("succeeded")


async def test_without_javascript_every_page_still_works(proxy: Proxy, visit: Visit) -> None:
    await feedback(proxy, "Your name is Kuro.")
    await feedback(proxy, "Answer in French.", wait=False)
    visitor = await visit("acme", script=False)
    page = visitor.page

    await page.get_by_role("link", name="Feedback log").click()
    record = page.locator("details.record").first
    await record.locator("summary").click()  # <details> opens without a script
    await expect(record.locator(".feedback")).to_have_text("Answer in French.")
    await page.get_by_role("link", name="follow it live").click()
    await expect(page.locator("#job-state")).to_have_text("QUEUED")  # as it was when the page was made
    await expect(page.locator("#job-live")).to_contain_text("Reload to see the latest state")
    await page.goto("/dashboard/adapters/bot")
    await page.get_by_role("button", name="Roll back to v1").click()  # a plain form
    await expect(page.locator("#head")).to_have_text("v1")


def _metrics(value: float) -> dict[str, float]:
    return {"margin": value, "compliance": value / 2, "drift": 0.01, "sdpo_loss": 1 - value}


def _write_run(folder: Path, run_id: str, started: str) -> None:
    """A finished two-step run of one preference, as `claas eval` leaves it."""
    run = RunDir(folder)
    adapters = {"identity": {"real": f"eval-{run_id}-identity-real", "control": f"eval-{run_id}-identity-control"}}
    meta = {"run_id": run_id, "started": started, "proxy": "http://proxy.test", "adapters": adapters,
            "config": load_config(None).model_dump(mode="json")}  # fmt: skip
    baseline = {"identity": {"version": 1, "metrics": _metrics(0.0)}}
    run.write_json(run.metadata_path, meta)
    run.write_json(run.baseline_path, baseline)
    for step in (1, 2):
        arms = {arm: {"version": step + 1, "metrics": _metrics(step * scale), "alerts": []}
                for arm, scale in (("real", 0.4), ("control", 0.1))}  # fmt: skip
        run.append_step({"preference": "identity", "step": step, **arms})
    run.write_json(run.summary_path, summarize(meta, baseline, run.read_steps()))
    write_plots(folder, meta, baseline, run.read_steps())


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval") / "20261201-120000-abcd"
    _write_run(folder, folder.name, "2026-12-01T12:00:00Z")
    return folder


async def test_eval_runs_show_the_summary_real_vs_control_plots_and_steps(
    proxy: Proxy, settings: ProxySettings, eval_run: Path, visit: Visit
) -> None:
    api = Api(proxy.base_url, proxy.keys["acme"])
    await asyncio.to_thread(publish, api, RunDir(eval_run), eval_run.name)
    folder_run = settings.eval_runs_dir / "acme" / "20261130-080000-beef"
    _write_run(folder_run, folder_run.name, "2026-11-30T08:00:00Z")
    visitor = await visit("acme")
    page = visitor.page

    await page.get_by_role("link", name="Evals").click()
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("published")  # newest first
    await expect(rows.nth(1)).to_contain_text("runs folder")
    await visitor.shot("evals")

    await page.get_by_role("link", name=eval_run.name).click()
    margin = page.get_by_role("row", name=re.compile(r"^margin "))
    await expect(margin).to_have_text(re.compile(r"margin\s*0\s*0.8\s*0.2\s*0.6"))
    plots = page.locator("figure.plot img")
    await expect(plots).to_have_count(5)
    for index in range(5):
        await expect(plots.nth(index)).to_be_visible()
        await page.wait_for_function("(img) => img.complete", arg=await plots.nth(index).element_handle())
        assert await plots.nth(index).evaluate("(img) => img.naturalWidth") > 0
    await page.get_by_text("identity step 2").click()
    await expect(page.locator("details.step").nth(1).get_by_role("row", name=re.compile("^sdpo_loss"))).to_be_visible()
    await visitor.shot("eval-run")

    bad = await proxy.http.put(f"/v1/evals/{eval_run.name}/evil.html", headers=proxy.auth("acme"), content=b"<b>")
    fake_png = await proxy.http.put(
        f"/v1/evals/{eval_run.name}/sdpo.png", headers=proxy.auth("acme"), content=b"<svg onload=alert(1)>"
    )
    sneaky = await proxy.http.put("/v1/evals/..%2Fbeta/summary.json", headers=proxy.auth("acme"), content=b"{}")
    assert (bad.status_code, fake_png.status_code) == (400, 400)
    assert sneaky.status_code in (400, 404)


async def test_an_eval_run_not_in_the_shape_claas_eval_writes_is_refused_or_shown_as_a_clear_422_page(
    proxy: Proxy, settings: ProxySettings, eval_run: Path, visit: Visit
) -> None:
    published = await proxy.http.put(
        f"/v1/evals/{eval_run.name}/summary.json", headers=proxy.auth("acme"), content=b'{"preferences": []}'
    )
    assert published.status_code == 400
    assert "summary.json is not in the shape" in published.json()["error"]["message"]
    await asyncio.to_thread(publish, Api(proxy.base_url, proxy.keys["acme"]), RunDir(eval_run), eval_run.name)
    runs = settings.eval_runs_dir / "acme"
    shapeless = runs / "20261130-080000-bad1"  # the operator's folder may hold anything
    _write_run(shapeless, shapeless.name, "2026-11-30T08:00:00Z")
    (shapeless / "summary.json").write_text('{"preferences": {"identity": {"metrics": {"margin": {"real": "high"}}}}}')
    garbled = runs / "20261129-080000-bad2"
    garbled.mkdir()
    (garbled / "metadata.json").write_bytes(b'{"run_id": "20261129-080000-bad2", "started": "\xff"}')
    visitor = await visit("acme")
    page = visitor.page

    listed = await page.goto("/dashboard/evals")
    assert listed is not None and listed.status == 200
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.first).to_contain_text(eval_run.name)
    await expect(rows.nth(2)).to_contain_text("metadata.json is not UTF-8")
    shown = await page.goto(f"/dashboard/evals/{eval_run.name}")
    assert shown is not None and shown.status == 200  # the good run, untouched by the refused summary
    await expect(page.get_by_role("row", name=re.compile(r"^margin "))).to_be_visible()
    for run, says in ((shapeless, "summary.json is not in the shape"), (garbled, "metadata.json is not UTF-8")):
        answer = await page.goto(f"/dashboard/evals/{run.name}")
        assert answer is not None and answer.status == 422, run.name
        await expect(page.get_by_role("heading", name="Cannot do that")).to_be_visible()
        await expect(page.get_by_role("alert")).to_contain_text(says)
    await expect(page.get_by_role("alert")).not_to_contain_text("Try again")
    await expect(page.get_by_role("alert")).not_to_contain_text("went wrong on our side")
    await visitor.shot("eval-run-not-in-shape")


async def test_a_feedback_record_that_cannot_be_read_leaves_the_log_and_the_adapter_page_working(
    proxy: Proxy, settings: ProxySettings, visit: Visit
) -> None:
    await feedback(proxy, "Kept as it was written.")
    await feedback(proxy, "Edited by hand afterwards.")
    newest, oldest = sorted((Path(settings.store_url) / "audit" / "acme").rglob("*.json"))
    newest.write_text(json.dumps(json.loads(newest.read_text()) | {"job_id": ["not", "an", "id"]}))
    # JSON can spell a lone surrogate, which no page can be sent with: it shows escaped.
    oldest.write_text(json.dumps(json.loads(oldest.read_text()) | {"feedback": "Kept \ud800 as it was written."}))
    visitor = await visit("acme")
    page = visitor.page

    for url in ("/dashboard/feedback", "/dashboard/adapters/bot"):
        answer = await page.goto(url)
        assert answer is not None and answer.status == 200, url
    await page.goto("/dashboard/feedback")
    await expect(page.locator("details.record")).to_have_count(1)
    await expect(page.locator("details.record .feedback")).to_have_text("Kept \\ud800 as it was written.")


async def test_payloads_in_feedback_prompts_and_names_render_as_text_and_run_nothing(
    proxy: Proxy, visit: Visit
) -> None:
    await feedback(proxy, XSS, prompt=XSS)
    visitor = await visit("acme")
    page = visitor.page

    await page.goto("/dashboard/feedback")
    record = page.locator("details.record").first
    await record.locator("summary").click()
    await expect(record.locator(".feedback")).to_have_text(XSS)
    await expect(record.locator(".message pre")).to_have_text(XSS)
    await expect(record.locator("img")).to_have_count(0)
    await expect(page.locator("main script")).to_have_count(0)
    await visitor.shot("payloads-as-text")
    await visitor.nothing_ran()

    # Adapter names are plain (storage refuses any other); a name in a URL comes back in the error page.
    await page.goto("/dashboard/adapters/" + '<img src="x" onerror="window.__pwned=3">')
    await expect(page.get_by_role("heading", name="Cannot do that")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text('<img src="x" onerror="window.__pwned=3">')
    await page.goto("/dashboard/feedback?adapter=" + "%3Cscript%3Ewindow.__pwned%3D4%3C%2Fscript%3E")
    await expect(page.get_by_role("alert")).to_contain_text("<script>window.__pwned=4</script>")
    await visitor.shot("payload-in-name")
    await visitor.nothing_ran()


async def test_another_tenant_sees_none_of_its_data_and_gets_404_on_its_urls(
    proxy: Proxy, eval_run: Path, visit: Visit
) -> None:
    job = await feedback(proxy, "Only acme may read this.", wait=False)
    await asyncio.to_thread(publish, Api(proxy.base_url, proxy.keys["acme"]), RunDir(eval_run), eval_run.name)
    visitor = await visit("beta")
    page = visitor.page

    await expect(page.get_by_role("link", name="secret")).to_be_visible()  # beta's own adapter
    await expect(page.get_by_text("bot")).to_have_count(0)
    await page.get_by_role("link", name="Feedback log").click()
    await expect(page.get_by_text("No feedback recorded")).to_be_visible()
    await page.get_by_role("link", name="Evals").click()
    await expect(page.get_by_text("No eval runs yet")).to_be_visible()
    await visitor.shot("other-tenant")
    for url in (
        "/dashboard/adapters/bot",
        f"/dashboard/jobs/{job['job_id']}",
        f"/dashboard/jobs/{job['job_id']}/events",
        "/dashboard/feedback?adapter=acme/bot",
        f"/dashboard/evals/{eval_run.name}",
        f"/dashboard/evals/{eval_run.name}/plots/margins.png",
    ):
        answer = await page.goto(url)
        assert answer is not None and answer.status == 404, url
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    await visitor.shot("not-found")
    refused = await page.request.post("/dashboard/adapters/bot/rollback", form={"version": "1"})
    assert refused.status in (403, 404)
    deleted = await proxy.http.delete(f"/v1/evals/{eval_run.name}", headers=proxy.auth("beta"))
    assert deleted.json() == {"deleted": False}  # beta's own (empty) folder of runs
    assert [r.run_id for r in await proxy.server.core.evals.list("acme")] == [eval_run.name]


async def test_a_rollback_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    proxy: Proxy, storage: StorageClient, visit: Visit
) -> None:
    await feedback(proxy, "Your name is Kuro.")
    visitor = await visit("acme")
    page = visitor.page

    for form in ({"version": "1"}, {"version": "1", "csrf": "guessed"}):
        refused = await page.request.post("/dashboard/adapters/bot/rollback", form=form)
        assert refused.status == 403 and "CSRF token" in await refused.text()
    other = await visit("beta")
    token = await other.page.locator("input[name=csrf]").first.get_attribute("value")
    refused = await page.request.post("/dashboard/adapters/bot/rollback", form={"version": "1", "csrf": token or ""})
    assert refused.status == 403  # a token of another session does not count
    assert await head(storage, "acme/bot") == 2
    await page.goto("/dashboard/adapters/bot")
    await expect(page.locator("#head")).to_have_text("v2")


async def test_an_expired_forged_or_revoked_session_and_storage_that_is_down_get_a_page_saying_so(
    proxy: Proxy,
    settings: ProxySettings,
    keys_file: Path,
    trainer: FakeTrainer,
    vllm: FakeVllm,
    keys: dict[str, str],
    visit: Visit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as patch:  # a session signed with the proxy's secret a day ago
        day_ago = time.time() - 86400
        patch.setattr(time, "time", lambda: day_ago)
        cookie = Sessions(SECRET, settings.dashboard_session_s).issue("acme", keys["acme"])
    visitor = await visit()
    await visitor.page.context.add_cookies([_cookie(cookie)])
    await visitor.page.goto("/dashboard/adapters")
    await expect(visitor.page.get_by_role("alert")).to_have_text("your session expired: sign in again")
    await visitor.shot("session-expired")
    assert await visitor.page.context.cookies() == []  # dropped
    forged = Sessions("another-secret-of-at-least-32-characters", settings.dashboard_session_s).issue(
        "acme", keys["acme"]
    )
    await visitor.page.context.add_cookies([_cookie(forged)])
    await visitor.page.goto("/dashboard/adapters")
    await expect(visitor.page.get_by_role("heading", name="Sign in")).to_be_visible()
    signed_in = await visit("acme")
    revoke_api_keys(keys_file, tenant="acme")  # `claas keys revoke --tenant acme`
    await signed_in.page.reload()
    await expect(signed_in.page.get_by_role("alert")).to_have_text(
        "the key of this session is no longer valid: sign in again"
    )

    nowhere = StorageClient.connect(f"127.0.0.1:{_closed_port()}")
    try:
        async with running_proxy(settings, nowhere, trainer, vllm, keys) as down:
            visitor = await visit(at=down)
            await visitor.sign_in(keys["beta"])
            await expect(visitor.page.get_by_role("heading", name="Unavailable")).to_be_visible()
            await expect(visitor.page.get_by_role("alert")).to_have_text(re.compile("a service the proxy needs"))
            assert "failed to connect" not in await visitor.page.content()  # storage's address stays in the log
            assert "Traceback" not in await visitor.page.content()
            await visitor.shot("storage-down")
    finally:
        await nowhere.close()


def _cookie(value: str) -> Any:
    """The session cookie as the proxy sets it."""
    return {"name": COOKIE, "value": value, "domain": "127.0.0.1", "path": "/dashboard"}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

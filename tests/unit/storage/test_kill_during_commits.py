"""Processes SIGKILLed while versions are committed: storage at random writes of 50 commits, the committing
trainer at random points of its upload stream. Each job ends with one version, whose bytes are the job's."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.common.domain import Lineage
from services.common.errors import DeadlineExceeded, Unavailable
from services.storage import layout
from services.storage.client import StorageClient
from services.storage.domain import Version
from services.storage.settings import StorageSettings
from tests.unit.storage.conftest import LORA, TOKEN, adapter_files, connect, serve
from tests.unit.storage.dying_uploader import upload_files, upload_messages

NAME = "acme/bot"
REPO = Path(__file__).resolve().parents[3]
COMMITS = 50
#: Object writes of a commit of three files: reservation, three files, manifest, commit.
WRITES_PER_COMMIT = 6
#: A kill point is drawn among the writes of the next this many commits (about 12 kills in 50 commits).
KILL_WITHIN_COMMITS = 8
#: With it storage is killed 12 times: in each gap of a commit (before each of its six writes and after the
#: last, the answer lost) and once in a crash recovery.
SEED = 240
#: Errors after which the trainer uploads again (``JobPipeline._upload``): the commit's fate is unknown.
RETRIED = (Unavailable, DeadlineExceeded)
#: Seconds a process may take to exit once it was killed, or to start serving.
PROCESS_TIMEOUT_S = 30.0


def _storage_env(settings: StorageSettings, port: int, writes_allowed: int, when: str, report: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"CLAAS_{k.upper()}": str(v) for k, v in settings.model_dump(exclude_none=True).items() if k != "port"})
    env.update(
        CLAAS_PORT=str(port),
        CLAAS_S3_ACCESS_KEY=settings.s3_access_key.get_secret_value(),
        CLAAS_S3_SECRET_KEY=settings.s3_secret_key.get_secret_value(),
        CLAAS_LOG_LEVEL="warning",
        CLAAS_TEST_CRASH_AFTER_WRITES=str(writes_allowed),
        CLAAS_TEST_CRASH_WHEN=when,
        CLAAS_TEST_CRASH_REPORT=str(report),
    )
    return env


async def _exit_status(process: subprocess.Popen) -> int:
    return await asyncio.to_thread(process.wait, PROCESS_TIMEOUT_S)


class CrashingStorage:
    """The storage process, killed at seeded-random object writes and started again on the same store (and
    port, so a client keeps its channel, as the trainer does) each time it died."""

    def __init__(self, settings: StorageSettings, rng: random.Random, reports: Path) -> None:
        self._settings = settings
        self._rng = rng
        self._reports = reports
        self._report = reports / "none"
        self.port = 0
        self.process: subprocess.Popen | None = None
        #: Where each kill struck: ("before" or "after", the write's object: "record", "file" or "manifest").
        self.killed_at: list[tuple[str, str]] = []
        self.kills_in_recovery = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it, again while it is killed by its own crash recovery (a recovery writes too)."""
        while True:
            writes_allowed = self._rng.randrange(WRITES_PER_COMMIT * KILL_WITHIN_COMMITS)
            when = "after" if writes_allowed and self._rng.random() < 0.5 else "before"
            self._report = self._reports / f"start-{len(self.killed_at)}.txt"
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.unit.storage.crashing_storage"],
                cwd=REPO,
                env=_storage_env(self._settings, self.port, writes_allowed, when, self._report),
                stdout=subprocess.PIPE,
                text=True,
            )
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), PROCESS_TIMEOUT_S)
            if line.strip():
                assert self.port in (0, int(line)), f"storage came back on port {line.strip()}, not {self.port}"
                self.port, self.process = int(line), process
                return
            process.stdout.close()
            assert await _exit_status(process) == -signal.SIGKILL, "storage exited before serving"
            self._record_kill()
            self.kills_in_recovery += 1

    def _record_kill(self) -> None:
        """Note where the process killed itself: a death at a planned write leaves its report."""
        when, _, key = self._report.read_text().split()
        kinds = {layout.RECORD_FILE: "record", layout.MANIFEST_FILE: "manifest"}
        self.killed_at.append((when, kinds.get(layout.parse_key(key).file, "file")))

    async def restart_after_kill(self) -> None:
        """Wait until the process that failed a call is gone (SIGKILLed at its write), then start it again."""
        assert self.process is not None
        assert await _exit_status(self.process) == -signal.SIGKILL
        self.process.stdout.close()
        self.process = None
        self._record_kill()
        await self.start()

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            await _exit_status(self.process)
            self.process.stdout.close()
            self.process = None


@dataclass
class Seen:
    """What a fresh client reads of the adapter."""

    head: int
    versions: list[Version]


async def _check_store(target: str, uploaded: dict[str, dict[str, bytes]], folder: Path) -> Seen:
    """The invariants a reader relies on, checked through a new client: the versions form one chain of
    increasing numbers, one per job, each a job that uploaded; the head is the last one and its bytes, as
    downloaded, are those of its manifest and those its job uploaded."""
    async with connect(target) as reader:
        head = (await reader.get_adapter(NAME)).head_version
        versions = await reader.list_versions(NAME)
        jobs = [v.lineage.job_id for v in versions]
        assert len(jobs) == len(set(jobs)), f"a job committed twice: {jobs}"
        assert set(jobs) <= set(uploaded)
        numbers = [v.version for v in versions]
        assert numbers == sorted(set(numbers))
        assert [v.parent_version for v in versions] == [0, *numbers][:-1]
        assert head == (numbers[-1] if numbers else 0)
        if head:
            folder.mkdir()
            header = await reader.download_version(NAME, 0, folder, include_optimizer=True)
            assert header.version == head
            files = {path.name: path.read_bytes() for path in folder.iterdir()}
            assert {f.path: (f.size, f.sha256) for f in header.files} == {
                path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in files.items()
            }
            assert files == uploaded[header.lineage.job_id]
    return Seen(head, versions)


async def test_storage_killed_at_random_writes_of_50_commits(settings: StorageSettings, tmp_path: Path) -> None:
    """A client commits 50 versions as the trainer does, uploading again after each failure of unknown fate,
    while storage is SIGKILLed at random writes and started again; every job commits once, in order."""
    settings = settings.model_copy(update={"keep_versions": 0})  # every version stays, so the chain can be checked
    async with serve(settings) as running, connect(running.target) as client:
        incarnation = (await client.create_adapter(NAME, "smollm2-135m", LORA)).incarnation
    (reports := tmp_path / "kills").mkdir()
    storage = CrashingStorage(settings, random.Random(SEED), reports)
    uploaded: dict[str, dict[str, bytes]] = {}
    committed: list[int] = []
    landed = lost = 0  # kills after / before the failed commit's commit point
    checks = itertools.count()
    await storage.start()
    client = StorageClient.connect(storage.target, token=TOKEN)
    try:
        head = 0
        for number in range(COMMITS):
            job = f"job-{number:02d}"
            uploaded[job] = files = adapter_files(size=2048, seed=number, optimizer=True)
            landed_as = 0  # the version this job's commit made, when a kill took its answer
            while True:
                try:
                    version = await client.upload_version(
                        NAME, head, files, Lineage(job_id=job), incarnation=incarnation
                    )
                    break
                except RETRIED:
                    await storage.restart_after_kill()
                    seen = await _check_store(storage.target, uploaded, tmp_path / f"check-{next(checks)}")
                    if seen.head == head:
                        lost += 1
                    else:
                        assert seen.versions[-1].lineage.job_id == job
                        landed_as, landed = seen.head, landed + 1
                    await client.channel.channel_ready()  # reconnected: the retry reaches the new process
            if landed_as:  # a retry after a landed commit gets that commit's version back, not a second one
                assert version.version == landed_as
            assert version.lineage.job_id == job
            assert version.parent_version == head
            assert version.version > head
            head = version.version
            committed.append(head)
        seen = await _check_store(storage.target, uploaded, tmp_path / "last")
    finally:
        await client.close()
        await storage.stop()

    assert [v.version for v in seen.versions] == committed
    assert sorted(v.lineage.job_id for v in seen.versions) == sorted(uploaded) and len(uploaded) == COMMITS
    # The kills struck before every kind of write and after the commit point (the answer lost); should a change
    # of the writes per commit leave a kind out, another seed brings it back.
    sites = {f"{when} {kind}" for when, kind in storage.killed_at}
    assert {"before record", "before file", "before manifest", "after record"} <= sites, storage.killed_at
    assert lost >= 1 and landed >= 1, (lost, landed)
    assert len(storage.killed_at) == lost + landed + storage.kills_in_recovery
    # Started once more over the store, as after a kill while idle, storage recovers to the same versions.
    async with serve(settings) as running:
        again = await _check_store(running.target, uploaded, tmp_path / "recovered")
    assert again == seen


#: Jobs of the trainer test, each first uploaded by a process that is killed.
TRAINER_JOBS = 6


def _kill_points(rng: random.Random, messages: int) -> list[str]:
    """Where each killed upload dies: after its answer came back, after its whole stream, and at random
    messages of the stream (0: before the header), in a seeded order."""
    points = ["answer", str(messages), *(str(k) for k in rng.sample(range(messages), TRAINER_JOBS - 2))]
    rng.shuffle(points)
    return points


async def _upload_and_die(target: str, parent: int, job: str, seed: int, kill: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.unit.storage.dying_uploader",
        *(target, TOKEN, NAME, str(parent), job, str(seed), kill),
        cwd=REPO,
    )
    assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT_S) == -signal.SIGKILL


async def test_trainer_killed_mid_commit_leaves_one_version_per_job(settings: StorageSettings, tmp_path: Path) -> None:
    """The trainer process dies while it uploads a version (or just after its commit); the job's next attempt
    (same job id, parent and bytes, as ``JobPipeline._upload`` retries) gets one version: the one that landed
    or a new one, never a second. Job ids do not outlive a trainer process (its job records live in memory),
    so a resubmitted job is another job; the retry within one process is the one that can meet a commit that
    already landed."""
    rng = random.Random(SEED)
    uploaded: dict[str, dict[str, bytes]] = {}
    async with serve(settings) as running, connect(running.target) as client:
        await client.create_adapter(NAME, "smollm2-135m", LORA)
        head = 0
        kills = _kill_points(rng, upload_messages(upload_files(0)))
        for number, kill in enumerate(kills):
            job = f"job-{number}"
            uploaded[job] = files = upload_files(number)
            await _upload_and_die(running.target, head, job, number, kill)

            seen = await _check_store(running.target, uploaded, tmp_path / f"killed-{number}")
            made = [v.version for v in seen.versions if v.lineage.job_id == job]
            if kill == "answer":
                assert seen.head == made[0]
            elif int(kill) < upload_messages(files):  # a stream cut short: part of the bytes never came
                # (after the whole stream, the commit may land or not: the process died before ending it)
                assert (seen.head, made) == (head, [])

            version = await client.upload_version(NAME, head, files, Lineage(job_id=job))
            assert version.lineage.job_id == job
            if made:  # the killed attempt's commit landed: the retry gets its version back
                assert version.version == made[0]
            seen = await _check_store(running.target, uploaded, tmp_path / f"retried-{number}")
            assert seen.head == version.version > head
            head = version.version

    assert sorted(v.lineage.job_id for v in seen.versions) == sorted(uploaded)

"""The whole system scaled out on one machine, with a trainer and a storage replica killed mid-run (issue 16).

Real processes on loopback: an S3 server (moto), 2 storage replicas over it, the teacher (hf), 3 trainers, 2 vLLM
servers and 2 proxies (one vLLM each, as a proxy pod has, routing chats by adapter). Every service reaches storage
through the replica list and the proxies reach the trainers through theirs. ``--clients`` tenants each make
``--adapters`` adapters and send ``--rounds`` rounds of feedback (a chat, then feedback on it), spreading their
calls over both proxies. Round 1 runs with everything up; in round 2 the script SIGKILLs a trainer while it runs one
of the round's jobs, and storage-1 with it, and starts both again ``--down-s`` later; round 3 runs with everything
up again. Then it checks what a user and an operator would:

* every job that was submitted ended SUCCEEDED (none lost, none stuck), and no job record is left unfinished;
* every feedback's completion id is in the lineage of exactly one version of its adapter, of no other adapter;
* every adapter's versions are 1..N with no gap, each one's parent the version before it;
* in the rounds when every trainer was up, all jobs of one adapter ran on one trainer.

It prints what it measured and exits 1 if a check fails. About 14 minutes on 2 CPU cores with the defaults,
2 of them starting the processes.

    python scripts/scale_check.py [--clients 8] [--adapters 6] [--rounds 3] [--down-s 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.cli.stack import ServiceProcess
from services.common.domain import Message
from services.common.errors import DeadlineExceeded, NotFound, Unavailable
from services.common.model import PACKAGED_MODEL, resolve_base_model
from services.common.net import free_port
from services.common.objectstore import ObjectStore, ObjectStoreSettings, open_object_store
from services.common.vllm_server import VllmOptions
from services.proxy.client import ProxyClient
from services.proxy.domain import ChatRequest, Sampling
from services.proxy.keys import add_api_key
from services.storage.dev_s3 import dev_s3_server
from services.trainer.domain import JobState
from services.trainer.journal import JOBS, OPEN, JobRecord

#: Cheap jobs: the check is about where jobs run and what they commit, not about what they teach.
JOB_CONFIG = {"steps": 1, "guided_rollouts": 0, "contrastive": False}
FEEDBACK = "Answer in one short sentence."
PROMPTS = ("Say hello.", "Name a colour.", "What is two plus two?")
#: Short leases so that a killed replica's work moves on within the run.
JOB_LEASE_S = 10
REPLICA_LEASE_S = 5
#: Client-side retries of one call that found a replica going down (a submit keeps its idempotency key).
CALL_ATTEMPTS = 5
TRAINERS = ("trainer-0", "trainer-1", "trainer-2")

T = TypeVar("T")


@dataclass
class Submitted:
    """One feedback as the client sent it."""

    tenant: str
    adapter: str
    round: int
    completion_id: str
    job_id: str
    state: JobState = JobState.QUEUED


@dataclass
class Tally:
    submitted: list[Submitted] = field(default_factory=list)
    retries: collections.Counter = field(default_factory=collections.Counter)


class Fleet:
    """Every process of the run, by name."""

    def __init__(self, root: Path, s3: dict[str, str], tenants: list[str]) -> None:
        self.root = root
        token = secrets.token_urlsafe(24)
        vllm_key = secrets.token_urlsafe(24)
        self.keys_file = root / "api_keys.json"
        self.keys = {tenant: add_api_key(self.keys_file, tenant) for tenant in tenants}
        model = resolve_base_model(PACKAGED_MODEL)  # converted once, before eleven processes need it
        ports = {name: free_port() for name in ("storage-0", "storage-1", "teacher", *TRAINERS, "proxy-0", "proxy-1")}
        address = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        storage = ",".join(address[f"storage-{n}"] for n in range(2))
        trainers = ",".join(address[name] for name in TRAINERS)
        common = {
            "CLAAS_HOST": "127.0.0.1",
            "CLAAS_INTERNAL_TOKEN": token,
            "CLAAS_LOG_FORMAT": "json",
            "CLAAS_BASE_MODEL": PACKAGED_MODEL,
            "CLAAS_GRACE_PERIOD_S": "5",
            "CLAAS_STORAGE_ADDR": storage,
            "CLAAS_TEACHER_ADDR": address["teacher"],
            **{f"CLAAS_{key.upper()}": value for key, value in s3.items()},
        }
        self.processes: dict[str, ServiceProcess] = {}
        #: The jobs the killed trainer held (queued or running) when it was killed.
        self.killed_jobs: list[str] = []
        python = [sys.executable, "-m"]

        def add(name: str, argv: list[str], env: dict[str, str], health: str) -> None:
            self.processes[name] = ServiceProcess(name, argv, env, health, root / "logs" / f"{name}.log")

        for n in range(2):
            env = {"CLAAS_PORT": str(ports[f"storage-{n}"]), "CLAAS_STORAGE_ID": f"storage-{n}",
                   "CLAAS_REPLICA_LEASE_S": str(REPLICA_LEASE_S)}  # fmt: skip
            add(f"storage-{n}", [*python, "services.storage"], common | env, address[f"storage-{n}"])
        teacher = {"CLAAS_PORT": str(ports["teacher"]), "CLAAS_ADAPTER_DIR": str(root / "teacher-adapters")}
        add("teacher", [*python, "services.teacher"], common | teacher, address["teacher"])
        for name in TRAINERS:
            env = {"CLAAS_PORT": str(ports[name]), "CLAAS_TRAINER_ID": name,
                   "CLAAS_JOB_LEASE_S": str(JOB_LEASE_S), "CLAAS_COMMIT_GUARD": "false",
                   "CLAAS_TORCH_THREADS": "1"}  # fmt: skip
            add(name, [*python, "services.trainer"], common | env, address[name])
        self.proxies: list[str] = []
        for n in range(2):
            vllm = VllmOptions(model=model, served_name=PACKAGED_MODEL, host="127.0.0.1", port=free_port(),
                               api_key=vllm_key)  # fmt: skip
            add(f"vllm-{n}", vllm.command(), vllm.environment(), vllm.url)
            env = {
                "CLAAS_PORT": str(ports[f"proxy-{n}"]),
                "CLAAS_HTTP_HOST": "127.0.0.1",
                "CLAAS_HTTP_PORT": str(free_port()),
                "CLAAS_TRAINER_ADDR": trainers,
                "CLAAS_VLLM_URL": vllm.url,
                "CLAAS_VLLM_API_KEY": vllm_key,
                "CLAAS_API_KEYS_FILE": str(self.keys_file),
                "CLAAS_ADAPTER_DIR": str(root / f"proxy-{n}-adapters"),
                "CLAAS_BASE_MODEL": PACKAGED_MODEL,
                # Chats routed by adapter: a chat on one proxy and its feedback on the other cross replicas.
                "CLAAS_PROXY_PEERS": f"{address['proxy-0']},{address['proxy-1']}",
                "CLAAS_PROXY_PEER_ADDR": address[f"proxy-{n}"],
            }
            add(f"proxy-{n}", [*python, "services.proxy"], common | env, address[f"proxy-{n}"])
            self.proxies.append(address[f"proxy-{n}"])

    async def up(self) -> None:
        for name in ("vllm-0", "vllm-1"):  # the slowest; the services start meanwhile
            self.processes[name].start()
        for group in (("storage-0", "storage-1"), ("teacher",), TRAINERS,
                      ("vllm-0", "vllm-1"), ("proxy-0", "proxy-1")):  # fmt: skip
            for name in group:
                if self.processes[name].popen is None:
                    self.processes[name].start()
            await asyncio.gather(*(self.processes[name].wait_healthy() for name in group))
            print(f"  up: {', '.join(group)}", flush=True)

    def down(self) -> None:
        for process in reversed(self.processes.values()):
            process.signal(signal.SIGTERM)


async def _retrying(tally: Tally, what: str, call: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(1, CALL_ATTEMPTS + 1):
        try:
            return await call()
        except (Unavailable, DeadlineExceeded):
            if attempt == CALL_ATTEMPTS:
                raise
            tally.retries[what] += 1
            await asyncio.sleep(attempt)  # back-off before a retry


async def _feedback_round(clients: list[ProxyClient], tenant: str, index: int, adapters: int, rnd: int,
                          tally: Tally) -> list[Submitted]:  # fmt: skip
    sent = []
    for a in range(adapters):
        name = f"bot-{a}"
        chat_on, submit_on = clients[(index + a + rnd) % 2], clients[(index + a + rnd + 1) % 2]
        prompt = PROMPTS[(a + rnd) % len(PROMPTS)]
        request = ChatRequest(name, (Message("user", prompt),), Sampling(max_tokens=16, temperature=1.0))
        reply = await _retrying(tally, "chat", functools.partial(chat_on.inference.chat, request))
        submit = functools.partial(submit_on.feedback.submit, [reply.completion_id], FEEDBACK, JOB_CONFIG,
                                   idempotency_key=f"scale-{tenant}-{name}-{rnd}")  # fmt: skip
        job = await _retrying(tally, "submit", submit)
        sent.append(Submitted(tenant, name, rnd, reply.completion_id, job.job_id))
    return sent


async def _wait_ended(client: ProxyClient, job: Submitted, tally: Tally) -> None:
    while True:
        try:
            async for view in client.feedback.watch(job.job_id):
                job.state = view.state
            if job.state.terminal:
                return
        except (Unavailable, DeadlineExceeded):
            pass
        tally.retries["watch"] += 1
        await asyncio.sleep(1)  # back-off before watching again


async def _records(store: ObjectStore) -> dict[str, JobRecord]:
    keys = await store.list(JOBS)
    return {key[len(JOBS) : -len(".json")]: JobRecord.from_json(await store.get(key)) for key in keys}


async def _held_by(store: ObjectStore, trainer: str) -> list[JobRecord]:
    """The unfinished jobs ``trainer`` holds, from the store's index of open jobs (one that ends meanwhile is
    left out)."""
    held = []
    for key in await store.list(f"{OPEN}{trainer}/"):
        try:
            held.append(JobRecord.from_json(await store.get(f"{JOBS}{key.rsplit('/', 1)[1]}.json")))
        except NotFound:
            continue
    return [r for r in held if not r.view.state.terminal]


async def _running_on(client: ProxyClient, job: Submitted) -> str | None:
    """The id of the job once its live state (the trainer's own, through the proxy) says it is scoring or
    training; None if it ends first or its watch breaks off."""
    try:
        async for view in client.feedback.watch(job.job_id):
            if view.state in (JobState.SCORING, JobState.TRAINING):
                return job.job_id
    except (Unavailable, DeadlineExceeded):
        pass
    return None


async def _kill_when_training(
    fleet: Fleet,
    store: ObjectStore,
    clients: dict[str, list[ProxyClient]],
    round_jobs: asyncio.Future[list[Submitted]],
    down_s: float,
    log: list[str],
) -> None:
    """Once the round's feedback is submitted, SIGKILL the trainer that runs one of its jobs (seen in the job's
    live state: the record is written on heartbeats only, and a one-step job can end between two), and storage-1
    with it; start both again ``down_s`` later."""
    jobs = await round_jobs
    watches = {asyncio.create_task(_running_on(clients[j.tenant][0], j)) for j in jobs}
    running = None
    try:
        while watches and running is None:
            done, watches = await asyncio.wait(watches, timeout=600, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            running = next((task.result() for task in done if task.result() is not None), None)
    finally:
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
    if running is None:
        raise RuntimeError("no job of round 2 was seen running within 600 s")
    victim = JobRecord.from_json(await store.get(f"{JOBS}{running}.json")).owner
    held = await _held_by(store, victim)
    busy = [running]
    killed = (victim, "storage-1")
    for name in killed:
        fleet.processes[name].signal(signal.SIGKILL)
    fleet.killed_jobs = [r.view.job_id for r in held]
    log.append(f"killed {victim} (running {busy}, holding {len(held)} unfinished jobs) and storage-1")
    print(f"  {log[-1]}", flush=True)
    await asyncio.sleep(down_s)  # how long the two stay down: the fault, not a synchronisation
    for name in killed:
        fleet.processes[name].start()
    await asyncio.gather(*(fleet.processes[name].wait_healthy() for name in killed))
    log.append(f"restarted {victim} and storage-1 after {down_s:.0f} s")
    print(f"  {log[-1]}", flush=True)


async def run(args: argparse.Namespace, root: Path) -> int:
    tenants = [f"client-{n}" for n in range(args.clients)]
    with dev_s3_server() as s3:
        fields = s3.fields("claas-scale")
        fleet = Fleet(root, fields, tenants)
        store = open_object_store(ObjectStoreSettings(**fields))
        started = time.monotonic()
        try:
            print("starting 2 storage, teacher, 3 trainers, 2 vLLM, 2 proxies", flush=True)
            await fleet.up()
            print(f"  all up after {time.monotonic() - started:.0f} s", flush=True)
            return await _workload(args, fleet, store, tenants)
        finally:
            fleet.down()


async def _workload(args: argparse.Namespace, fleet: Fleet, store: ObjectStore, tenants: list[str]) -> int:
    tally = Tally()
    events: list[str] = []
    clients = {t: [ProxyClient.connect(p, token=fleet.keys[t], timeout_s=600) for p in fleet.proxies] for t in tenants}
    for index, tenant in enumerate(tenants):
        for a in range(args.adapters):
            await clients[tenant][(index + a) % 2].adapters.create(f"bot-{a}")
    round_seconds = []
    for rnd in range(1, args.rounds + 1):
        began = time.monotonic()
        round_jobs: asyncio.Future[list[Submitted]] = asyncio.get_running_loop().create_future()
        chaos = _kill_when_training(fleet, store, clients, round_jobs, args.down_s, events) if rnd == 2 else None
        chaos_task = asyncio.create_task(chaos) if chaos else None
        rounds = await asyncio.gather(*(
            _feedback_round(clients[t], t, i, args.adapters, rnd, tally) for i, t in enumerate(tenants)))  # fmt: skip
        sent = [job for batch in rounds for job in batch]
        round_jobs.set_result(sent)
        tally.submitted += sent
        await asyncio.gather(*(_wait_ended(clients[j.tenant][n % 2], j, tally) for n, j in enumerate(sent)))
        if chaos_task is not None:
            await chaos_task
        round_seconds.append(time.monotonic() - began)
        states = collections.Counter(j.state.name for j in sent)
        print(f"round {rnd}: {len(sent)} jobs in {round_seconds[-1]:.0f} s: {dict(states)}", flush=True)

    failures: list[str] = []
    jobs = tally.submitted
    not_done = [j for j in jobs if j.state is not JobState.SUCCEEDED]
    if not_done:
        failures.append(f"{len(not_done)} jobs did not succeed: {[(j.job_id, j.state.name) for j in not_done][:5]}")
    records = await _records(store)
    missing = [j.job_id for j in jobs if j.job_id not in records]
    unfinished = [job_id for job_id, r in records.items() if not r.view.state.terminal]
    left_open = await store.list(OPEN)
    if missing or unfinished or left_open:
        failures.append(f"records: {len(missing)} missing, {len(unfinished)} unfinished, {len(left_open)} open")
    if len({j.job_id for j in jobs}) != len(jobs):
        failures.append("two feedbacks were given one job")

    lineage_counts: collections.Counter = collections.Counter()
    versions_made = 0
    for tenant in tenants:
        for a in range(args.adapters):
            name = f"bot-{a}"
            versions = await clients[tenant][0].adapters.versions(name)
            numbers = [v.version for v in versions]
            if numbers != list(range(1, len(numbers) + 1)):
                failures.append(f"{tenant}/{name}: versions {numbers} are not contiguous")
            for v in versions[1:]:
                if v.parent_version != v.version - 1:
                    failures.append(f"{tenant}/{name}: v{v.version} has parent {v.parent_version}")
                for completion in v.lineage.completion_ids:
                    lineage_counts[(tenant, name, completion)] += 1
            versions_made += len(versions) - 1
    for j in jobs:
        seen = lineage_counts.pop((j.tenant, j.adapter, j.completion_id), 0)
        if seen != 1:
            failures.append(f"completion {j.completion_id} of {j.tenant}/{j.adapter} is in {seen} versions")
    if lineage_counts:
        failures.append(f"{len(lineage_counts)} completions in lineages belong to no feedback of their adapter")

    owners: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for j in jobs:
        if j.round != 2 and j.job_id in records:
            owners[(j.tenant, j.adapter)].add(records[j.job_id].owner)
    split = {k: v for k, v in owners.items() if len(v) != 1}
    if split:
        failures.append(f"{len(split)} adapters had jobs on several trainers while all were up: {list(split)[:3]}")
    per_trainer = collections.Counter(records[j.job_id].owner for j in jobs if j.job_id in records)
    killed = fleet.killed_jobs
    finished_by = collections.Counter(records[k].owner for k in killed if k in records)

    for close in (c.close() for pair in clients.values() for c in pair):
        await close
    print()
    print(f"clients {args.clients} x adapters {args.adapters} x rounds {args.rounds} = {len(jobs)} feedbacks")
    for line in events:
        print(f"fault: {line}")
    print(f"round seconds: {', '.join(f'{s:.0f}' for s in round_seconds)}")
    print(f"jobs by final trainer: {dict(sorted(per_trainer.items()))}")
    print(f"jobs the killed trainer held: {len(killed)}, finished by {dict(finished_by)}")
    print(f"versions committed: {versions_made} (jobs merged into another's version: "
          f"{sum(len(r.view.merged_job_ids) for r in records.values())})")  # fmt: skip
    print(f"client retries: {dict(tally.retries)}")
    if failures:
        print("FAILED:")
        for failure in failures:
            print(f"  {failure}")
        return 1
    print("PASSED: every job succeeded once, every completion in exactly one version, versions contiguous, "
          "one trainer per adapter while all were up")  # fmt: skip
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="tenants, each a client with its own API key")
    parser.add_argument("--adapters", type=int, default=6, help="adapters per client")
    parser.add_argument("--rounds", type=int, default=3, help="feedbacks per adapter, one per round (>= 2)")
    parser.add_argument("--down-s", type=float, default=20.0, help="how long the killed replicas stay down")
    parser.add_argument("--keep", type=Path, help="keep the logs here instead of a temporary folder")
    args = parser.parse_args()
    if args.rounds < 2 or args.clients < 1 or args.adapters < 1:
        parser.error("--rounds must be at least 2 (round 2 has the kills); --clients and --adapters at least 1")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(run(args, args.keep)))
    with tempfile.TemporaryDirectory(prefix="claas-scale-") as root:
        sys.exit(asyncio.run(run(args, Path(root))))


if __name__ == "__main__":
    main()

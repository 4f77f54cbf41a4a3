"""Rollouts: durable, found by id within the tenant only, swept after the retention period."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.domain import Message
from services.common.errors import NotFound
from services.common.objectstore import LocalFolderStore
from services.proxy.domain import Sampling
from services.proxy.rollouts import Rollout, RolloutStore, completion_date, new_completion_id

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def make(tenant: str = "acme", when: datetime = NOW) -> Rollout:
    return Rollout(
        completion_id=new_completion_id(when),
        tenant=tenant,
        adapter=f"{tenant}/bot",
        version=3,
        messages=(Message("user", "Hi"),),
        prompt_ids=(1, 2, 3),
        response_ids=(4, 2),
        sampled_logprobs=(-0.25, -1.0),
        sampling=Sampling(max_tokens=16, temperature=0.0, stop=("\n",)),
        text="Yo",
        finish_reason="stop",
        created_at=when,
    )


@pytest.fixture
def folder(tmp_path: Path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path, fsync=False)


def store(folder: LocalFolderStore, *, cache_size: int = 0, now: datetime = NOW) -> RolloutStore:
    return RolloutStore(folder, cache_size=cache_size, retention_days=7, clock=lambda: now)


async def test_a_rollout_round_trips_through_the_object_store(folder: LocalFolderStore) -> None:
    rollout = make()
    await store(folder).put(rollout)

    assert await store(folder).get("acme", rollout.completion_id) == rollout  # a fresh store: read from disk
    assert await folder.list("rollouts/") == [f"rollouts/acme/2026-03-10/{rollout.completion_id}.json"]


@pytest.mark.parametrize("completion_id", ["cmpl-20260310-" + "0" * 32, "nope", "cmpl-20261399-" + "a" * 32, "../x"])
async def test_unknown_and_malformed_ids_are_not_found(folder: LocalFolderStore, completion_id: str) -> None:
    with pytest.raises(NotFound, match="not found"):
        await store(folder).get("acme", completion_id)


async def test_another_tenant_never_reads_a_rollout(folder: LocalFolderStore) -> None:
    rollouts = store(folder, cache_size=10)
    rollout = make("acme")
    await rollouts.put(rollout)
    with pytest.raises(NotFound) as caught:
        await rollouts.get("beta", rollout.completion_id)
    assert caught.value.message == f"completion '{rollout.completion_id}' not found"


async def test_recent_rollouts_are_served_from_memory(folder: LocalFolderStore) -> None:
    rollouts = store(folder, cache_size=1)
    first, second = make(), make()
    await rollouts.put(first)
    await rollouts.put(second)
    await folder.delete_prefix("rollouts/")

    assert await rollouts.get("acme", second.completion_id) == second
    with pytest.raises(NotFound):
        await rollouts.get("acme", first.completion_id)  # evicted from the cache, and gone from disk


async def test_sweep_deletes_what_is_past_retention_and_only_that(folder: LocalFolderStore) -> None:
    old, edge, fresh = make(when=NOW - timedelta(days=9)), make(when=NOW - timedelta(days=7)), make("beta")
    for rollout in (old, edge, fresh):
        await store(folder).put(rollout)
    rollouts = store(folder, cache_size=10)

    assert await rollouts.sweep() == 1
    remaining = await folder.list("rollouts/")
    assert [k.rsplit("/", 1)[1] for k in remaining] == sorted(f"{r.completion_id}.json" for r in (edge, fresh))
    with pytest.raises(NotFound):
        await rollouts.get("acme", old.completion_id)


async def test_expired_rollouts_are_not_found_even_before_the_sweep(folder: LocalFolderStore) -> None:
    old = make(when=NOW - timedelta(days=30))
    await store(folder).put(old)
    with pytest.raises(NotFound):
        await store(folder).get("acme", old.completion_id)


def test_completion_ids_carry_their_day() -> None:
    completion_id = new_completion_id(NOW)
    assert completion_date(completion_id) == NOW.date()
    assert completion_date("chatcmpl-123") is None


def test_a_rollout_stored_before_the_rename_still_reads() -> None:
    """Rollouts written before ``sampled_logprobs`` had its name keep the behaviour log-probs under "logprobs"."""
    rollout = make()
    body = json.loads(rollout.to_json())
    body["logprobs"] = body.pop("sampled_logprobs")
    assert Rollout.from_json(json.dumps(body).encode()) == rollout

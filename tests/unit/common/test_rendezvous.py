"""Rendezvous ownership: stable, balanced, and one member more or less moves about 1/N of the adapters."""

from __future__ import annotations

import collections
import math

import dns.exception
import pytest

from services.common.errors import InvalidArgument
from services.common.peers import PeerSet, parse_static
from services.common.rendezvous import owner, ranked

ADAPTERS = [f"tenant-{i % 37}/adapter-{i}" for i in range(1000)]


def trainers(n: int) -> list[str]:
    return [f"claas-trainer-{i}.claas-trainer.claas.svc.cluster.local:50053" for i in range(n)]


def about(share: float) -> tuple[float, float]:
    """The bounds of a binomial count of ``share`` of the adapters: its mean ± 4 standard deviations."""
    mean = len(ADAPTERS) * share
    spread = 4 * math.sqrt(mean * (1 - share))
    return mean - spread, mean + spread


def owners(members: list[str]) -> dict[str, str]:
    return {adapter: owner(adapter, members) for adapter in ADAPTERS}


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_adding_one_member_moves_about_one_in_n_plus_one(n: int) -> None:
    before, after = owners(trainers(n)), owners(trainers(n + 1))
    moved = [a for a in ADAPTERS if before[a] != after[a]]
    # Every moved adapter goes to the newcomer, which wins its fair share: 1/(n+1), give or take chance.
    assert {after[a] for a in moved} == {trainers(n + 1)[-1]}
    low, high = about(1 / (n + 1))
    assert low <= len(moved) <= high


@pytest.mark.parametrize("n", [3, 5, 10])
def test_removing_one_member_moves_only_its_adapters_to_their_next_choice(n: int) -> None:
    members = trainers(n)
    gone = members[1]
    before = owners(members)
    after = owners([m for m in members if m != gone])
    moved = [a for a in ADAPTERS if before[a] != after[a]]
    assert all(before[a] == gone for a in moved)
    assert len(moved) == sum(1 for a in ADAPTERS if before[a] == gone)
    low, high = about(1 / n)
    assert low <= len(moved) <= high
    # The takeover is the second member of the adapter's own order, which every caller computes alike.
    assert all(after[a] == ranked(a, members)[1] for a in moved)


def test_ownership_is_balanced_and_the_same_for_every_caller() -> None:
    members = trainers(4)
    counts = collections.Counter(owners(members).values())
    assert set(counts) == set(members)
    assert all(180 <= c <= 320 for c in counts.values()), counts
    # Order and duplicates of the member list do not matter.
    assert owners(list(reversed(members)) + members[:1]) == owners(members)


def test_an_empty_set_has_no_owner() -> None:
    with pytest.raises(ValueError, match="replica set is empty"):
        owner("a/b", [])


def test_a_static_spec_lists_its_members() -> None:
    assert parse_static("127.0.0.1:5001, 127.0.0.1:5002,127.0.0.1:5001") == ("127.0.0.1:5001", "127.0.0.1:5002")
    for bad in ["", "127.0.0.1", "host:0", "host:port", ":80"]:
        with pytest.raises(InvalidArgument):
            parse_static(bad)
    with pytest.raises(InvalidArgument, match="srv: needs a DNS name"):
        PeerSet("srv:")


async def test_an_srv_set_follows_the_records_and_keeps_them_through_a_failed_lookup() -> None:
    answers: list[list[str] | Exception] = [
        ["b:1", "a:1"],
        ["a:1", "b:1", "c:1"],
        dns.exception.Timeout(),
        [],
    ]
    asked: list[str] = []

    async def resolver(name: str) -> list[str]:
        asked.append(name)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    peers = PeerSet("srv:_grpc._tcp.claas-trainer", resolver=resolver)
    assert peers.dynamic and peers.members() == ()
    assert await peers.refresh() == ("a:1", "b:1")
    assert await peers.refresh() == ("a:1", "b:1", "c:1")
    assert await peers.refresh() == ("a:1", "b:1", "c:1")
    # No record at all is an answer (no pod is ready), not a failure.
    assert await peers.refresh() == ()
    assert asked == ["_grpc._tcp.claas-trainer"] * 4


async def test_a_dns_set_takes_the_address_records_of_a_name_with_its_port() -> None:
    asked: list[str] = []

    async def resolver(name_port: str) -> list[str]:
        asked.append(name_port)
        return ["10.0.0.9:50050", "10.0.0.7:50050"]

    peers = PeerSet("dns:///claas-proxy-peers:50050", resolver=resolver)
    assert peers.dynamic and peers.members() == ()
    assert await peers.refresh() == ("10.0.0.7:50050", "10.0.0.9:50050")
    assert asked == ["claas-proxy-peers:50050"]
    for bad in ["dns:///", "dns:///claas-proxy-peers", "dns:///claas-proxy-peers:port"]:
        with pytest.raises(InvalidArgument):
            PeerSet(bad)

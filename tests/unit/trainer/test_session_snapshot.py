"""A session's snapshot (the guard's fallback to a job's halfway step) puts the weights and AdamW back exactly."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from services.trainer.batching import Session
from services.trainer.config import SdpoConfig


def _adam_step(params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, target: float) -> None:
    optimizer.zero_grad()
    sum(((p - target) ** 2).sum() for p in params.values()).backward()
    optimizer.step()


def test_restoring_a_snapshot_continues_exactly_as_from_that_step() -> None:
    torch.manual_seed(0)
    params = {"a": torch.nn.Parameter(torch.randn(4, 3)), "b": torch.nn.Parameter(torch.randn(3))}
    optimizer = torch.optim.AdamW(list(params.values()), lr=0.1)
    session = Session(None, SimpleNamespace(name="slot0", params=params), optimizer, SdpoConfig())
    _adam_step(params, optimizer, 1.0)
    snapshot = session.snapshot()
    halfway = {k: p.detach().clone() for k, p in params.items()}

    _adam_step(params, optimizer, 1.0)
    _adam_step(params, optimizer, 1.0)
    after_two_more = {k: p.detach().clone() for k, p in params.items()}
    session.restore(snapshot)

    assert all(torch.equal(params[k], halfway[k]) for k in params)
    assert all(optimizer.state[p]["step"].item() == 1 for p in params.values())
    # The restored moments are those of step 1: the same two steps again land on the same weights.
    _adam_step(params, optimizer, 1.0)
    _adam_step(params, optimizer, 1.0)
    assert all(torch.equal(params[k], after_two_more[k]) for k in params)
    # And the snapshot is a copy: the steps since did not change it.
    session.restore(snapshot)
    assert all(torch.equal(params[k], halfway[k]) for k in params)

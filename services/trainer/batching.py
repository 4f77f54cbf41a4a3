"""One job's training session: samples packed into tensors, the teacher's targets beside them, SDPO steps.

Student context = exactly the prompt ids the sample carries followed by its response ids; the response
mask is built by position (SmolLM2's pad token is its end-of-turn token, which must stay in the loss).
Logits are computed only at response positions: the transformer body runs over the whole sequence, its
hidden states are sliced at the positions that predict response tokens, and only those go through the LM
head (a full-vocabulary head over every prompt position would dominate the step's cost).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from services.common.domain import StepMetrics
from services.common.errors import FailedPrecondition
from services.teacher.domain import TokenDistributions
from services.teacher.prompts import hindsight_messages, render_prompt
from services.trainer.config import SdpoConfig
from services.trainer.domain import Sample, Targets
from services.trainer.losses import SdpoBatch, SdpoMetrics, sdpo_loss, student_support_logprobs, with_tail


class LoraSlot(Protocol):
    """A LoRA adapter of the model; ``params`` are its live (trainable) parameters."""

    name: str
    params: dict[str, torch.nn.Parameter]


class ModelHandle(Protocol):
    """What a session needs of the warm model (``services.trainer.engine.Engine`` is one)."""

    model: torch.nn.Module
    tokenizer: Any
    device: str
    micro_batch_size: int

    def activate(self, slot: LoraSlot) -> None: ...

    def body_and_head(self) -> tuple[torch.nn.Module, torch.nn.Module]: ...

    def adapter_disabled(self) -> AbstractContextManager: ...


@dataclass
class _Micro:
    """A micro-batch of B sequences, right-padded; response tensors are [B, T]."""

    input_ids: torch.Tensor  # [B, L]
    attention: torch.Tensor  # [B, L]
    positions: torch.Tensor  # [B, T] index of the hidden state that predicts response token t
    response: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] bool
    sampled_logprobs: torch.Tensor  # [B, T] behaviour log-probs
    support_ids: torch.Tensor | None = None  # [B, T, K]
    teacher_support: torch.Tensor | None = None  # [B, T, K+1]
    teacher_tokens: torch.Tensor | None = None
    neutral_support: torch.Tensor | None = None
    neutral_tokens: torch.Tensor | None = None
    anchor_support: torch.Tensor | None = None
    anchor_tokens: torch.Tensor | None = None
    base_tokens: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


class Session:
    """A job's steps on one slot: built by ``Engine.open``, then ``set_targets`` and ``step`` N times; the
    engine exports ``slot`` and ``optimizer`` afterwards."""

    def __init__(
        self, model: ModelHandle, slot: LoraSlot, optimizer: torch.optim.Optimizer, config: SdpoConfig
    ) -> None:
        self._model = model
        self.slot = slot
        self.optimizer = optimizer
        self._config = config
        self._micro: list[_Micro] = []

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The slot's weights and the optimizer's state as they are now (copies), for ``restore``."""
        weights = {key: p.detach().clone() for key, p in self.slot.params.items()}
        return weights, copy.deepcopy(self.optimizer.state_dict())

    def restore(self, snapshot: tuple[dict[str, torch.Tensor], dict]) -> None:
        """Put a ``snapshot`` back: the session is then as it was when the snapshot was taken."""
        weights, state = snapshot
        with torch.no_grad():
            for key, param in self.slot.params.items():
                param.copy_(weights[key])
        self.optimizer.load_state_dict(copy.deepcopy(state))

    def student_support(self, samples: Sequence[Sample], k: int) -> list[np.ndarray]:
        """The student's top-k ids at every response position ([T, k] per sample), for ``support="student"``."""
        self._model.activate(self.slot)
        out: list[np.ndarray] = []
        with torch.no_grad():
            for chunk in self._chunks(samples):
                micro = self._pack(chunk)
                ids = self._logits(micro).topk(k, dim=-1).indices.cpu().numpy()
                out.extend(ids[b, : len(s.response_ids)] for b, s in enumerate(chunk))
        return out

    def guided_samples(self, samples: Sequence[Sample], seed: int) -> list[Sample]:
        """Teacher-guided rollouts: ``guided_rollouts`` responses per sample, sampled (temperature 1, the
        whole vocabulary) from the base model under the sample's hindsight prompt, then set in the
        student's context as ordinary samples. Their behaviour log-probs are the student's own as the job
        found it, so rho starts at 1 and only corrects for what the job's steps change: the teacher's
        distribution picks the states, the loss at each state is the same distribution match as on-policy.
        """
        config = self._config
        tokenizer = self._model.tokenizer
        copies = [(sample, copy) for sample in samples for copy in range(config.guided_rollouts)]
        prompts = [
            render_prompt(tokenizer, hindsight_messages(sample.messages, sample.feedback, config.template))[1]
            for sample, _ in copies
        ]
        self._model.activate(self.slot)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with self._model.adapter_disabled():
                responses = generate_ids(
                    self._model.model,
                    prompts,
                    max_new_tokens=config.guided_max_tokens,
                    eos=tokenizer.eos_token_id,
                    sample=True,
                )
            named = [(sample, f"{sample.completion_id}#guided{copy + 1}") for sample, copy in copies]
            return self._in_student_context(named, responses)

    def greedy_samples(self, samples: Sequence[Sample]) -> list[Sample]:
        """The student's own greedy answer (``greedy_max_tokens`` long) to each distinct prompt of the job,
        as it found the adapter, trained on beside the user's rollouts. Greedy answers are what a user reads
        next, and where a small model loops after a learned word ("Kuro, a Kuro-Kuro"); sampled rollouts at
        temperature 1 rarely visit that path, so without it the teacher never corrects it."""
        firsts: dict[tuple[int, ...], Sample] = {}
        for sample in samples:
            firsts.setdefault(sample.prompt_ids, sample)  # the first rollout of each prompt names its answer
        distinct = list(firsts.values())
        self._model.activate(self.slot)
        with torch.no_grad():
            responses = generate_ids(
                self._model.model,
                [sample.prompt_ids for sample in distinct],
                max_new_tokens=self._config.greedy_max_tokens,
                eos=self._model.tokenizer.eos_token_id,
                sample=False,
            )
            named = [(sample, f"{sample.completion_id}#greedy") for sample in distinct]
            return self._in_student_context(named, responses)

    def _in_student_context(self, named: Sequence[tuple[Sample, str]], responses: Sequence[list[int]]) -> list[Sample]:
        """Samples of the trainer's own responses, in each source sample's context, whose behaviour
        log-probs are the student's as the job found it (before any step), so rho starts at 1."""
        made = [
            dataclasses.replace(
                sample,
                completion_id=completion_id,
                response_ids=tuple(response),
                sampled_logprobs=(0.0,) * len(response),
            )
            for (sample, completion_id), response in zip(named, responses, strict=True)
        ]
        for start in range(0, len(made), self._model.micro_batch_size):
            chunk = made[start : start + self._model.micro_batch_size]
            micro = self._pack(chunk)
            logprobs = _token_logprobs(self._logits(micro), micro.response).cpu()
            for b, sample in enumerate(chunk):
                values = tuple(float(v) for v in logprobs[b, : len(sample.response_ids)])
                made[start + b] = dataclasses.replace(sample, sampled_logprobs=values)
        return made

    def set_targets(self, samples: Sequence[Sample], targets: Sequence[Targets]) -> None:
        """Pack the samples with their teacher targets; base log-probs too when the KL penalty is on."""
        if len(samples) != len(targets):
            raise ValueError(f"{len(samples)} samples but {len(targets)} teacher results")
        self._model.activate(self.slot)
        self._micro = []
        size = self._model.micro_batch_size
        for start in range(0, len(samples), size):
            chunk, chunk_targets = samples[start : start + size], targets[start : start + size]
            micro = self._pack(chunk)
            horizon = micro.response.shape[1]
            micro.support_ids, micro.teacher_support, micro.teacher_tokens = _stack(
                [t.teacher for t in chunk_targets], horizon, micro.mask.device
            )
            if all(t.neutral is not None for t in chunk_targets):
                _, micro.neutral_support, micro.neutral_tokens = _stack(
                    [t.neutral for t in chunk_targets], horizon, micro.mask.device
                )
                # The contrastive target is built on the base policy, adapter off (see losses).
                with torch.no_grad(), self._model.adapter_disabled():
                    logits = self._logits(micro)
                    support, tail = student_support_logprobs(logits, micro.support_ids)
                    micro.anchor_support = with_tail(support, tail)
                    micro.anchor_tokens = _token_logprobs(logits, micro.response)
            if self._config.kl_coef > 0:
                with torch.no_grad(), self._model.adapter_disabled():
                    micro.base_tokens = _token_logprobs(self._logits(micro), micro.response)
            self._micro.append(micro)

    def step(self, number: int) -> StepMetrics:
        """One AdamW step over the whole batch (micro-batches accumulate; per-sample mean, then batch mean)."""
        if not self._micro:
            raise RuntimeError("set_targets must come before step")
        self._model.activate(self.slot)
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self._accumulate()
        params = list(self.slot.params.values())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self._config.max_grad_norm))
        if not (math.isfinite(grad_norm) and math.isfinite(metrics.loss)):
            # One non-finite step would poison the adapter for good; nothing is committed.
            self.optimizer.zero_grad(set_to_none=True)
            raise FailedPrecondition(
                f"training diverged at step {number} (loss {metrics.loss}, grad norm {grad_norm}); "
                "lower learning_rate or check the samples' sampled_logprobs"
            )
        self.optimizer.step()
        return StepMetrics(
            step=number,
            loss=metrics.loss,
            distill_loss=metrics.distill_loss,
            kl=metrics.kl,
            mean_is_ratio=metrics.is_ratio,
            clip_fraction=metrics.clip_fraction,
            grad_norm=grad_norm,
            tokens=int(metrics.tokens),
            teacher_student_gap=metrics.teacher_student_gap,
        )

    def _accumulate(self) -> SdpoMetrics:
        """Backward over every micro-batch, each weighted by its share of the samples; the metrics are the
        same weighted means (token counts are summed)."""
        model = self._model.model
        total = sum(m.size for m in self._micro)
        sums = dict.fromkeys(SdpoMetrics.__dataclass_fields__, 0.0)
        model.train()  # LoRA dropout, when the shape has any; the base model has none
        try:
            for micro in self._micro:
                loss, metrics = sdpo_loss(self._batch(micro), self._config)
                weight = micro.size / total
                (loss * weight).backward()
                for name in sums:
                    value = getattr(metrics, name)
                    sums[name] += value if name == "tokens" else value * weight
        finally:
            model.eval()
        return SdpoMetrics(**sums)

    # -- tensors ----------------------------------------------------------------------------------

    def _chunks(self, samples: Sequence[Sample]) -> list[Sequence[Sample]]:
        size = self._model.micro_batch_size
        return [samples[i : i + size] for i in range(0, len(samples), size)]

    def _pack(self, samples: Sequence[Sample]) -> _Micro:
        device = self._model.device
        pad = self._model.tokenizer.pad_token_id or 0
        batch, horizon = len(samples), max(len(s.response_ids) for s in samples)
        # The last response token is only predicted, never an input.
        length = max(len(s.prompt_ids) + len(s.response_ids) - 1 for s in samples)
        input_ids = torch.full((batch, length), pad, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        positions = torch.zeros((batch, horizon), dtype=torch.long)
        response = torch.zeros((batch, horizon), dtype=torch.long)
        mask = torch.zeros((batch, horizon), dtype=torch.bool)
        sampled = torch.zeros((batch, horizon), dtype=torch.float32)
        for b, sample in enumerate(samples):
            ids = list(sample.prompt_ids) + list(sample.response_ids[:-1])
            n_prompt, n_resp = len(sample.prompt_ids), len(sample.response_ids)
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention[b, : len(ids)] = 1
            positions[b] = n_prompt - 1  # padded positions point at a real token; the mask drops them
            positions[b, :n_resp] = torch.arange(n_prompt - 1, n_prompt - 1 + n_resp)
            response[b, :n_resp] = torch.tensor(sample.response_ids)
            mask[b, :n_resp] = True
            sampled[b, :n_resp] = torch.tensor(sample.sampled_logprobs, dtype=torch.float32)
        tensors = (input_ids, attention, positions, response, mask, sampled)
        return _Micro(*(t.to(device) for t in tensors))

    def _logits(self, micro: _Micro) -> torch.Tensor:
        """[B, T, V] logits at the response positions only."""
        body, head = self._model.body_and_head()
        hidden = body(input_ids=micro.input_ids, attention_mask=micro.attention, use_cache=False).last_hidden_state
        index = micro.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return head(hidden.gather(1, index))

    def _batch(self, micro: _Micro) -> SdpoBatch:
        logits = self._logits(micro)
        support, tail = student_support_logprobs(logits, micro.support_ids)
        return SdpoBatch(
            student_support=with_tail(support, tail),
            teacher_support=micro.teacher_support,
            student_tokens=_token_logprobs(logits, micro.response),
            sampled_logprobs=micro.sampled_logprobs,
            teacher_tokens=micro.teacher_tokens,
            mask=micro.mask,
            neutral_support=micro.neutral_support,
            neutral_tokens=micro.neutral_tokens,
            anchor_support=micro.anchor_support,
            anchor_tokens=micro.anchor_tokens,
            base_tokens=micro.base_tokens,
        )


def generate_ids(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos: int, sample: bool
) -> list[list[int]]:
    """One response per prompt, greedy or sampled at temperature 1 over the whole vocabulary; each up to and
    including the end-of-turn token when one comes. The prompts run as one left-padded batch: on a CPU a
    batch of eight costs little more than one answer, token by token."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), eos, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        pad_token_id=eos,
        **sampling,
    )[:, width:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _stack(
    dists: Sequence[TokenDistributions], horizon: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded [B, T, K] ids, [B, T, K+1] log-probs with the tail last, [B, T] sampled log-probs."""
    k = dists[0].k
    batch = len(dists)
    ids = torch.zeros((batch, horizon, k), dtype=torch.long)
    logprobs = torch.zeros((batch, horizon, k), dtype=torch.float32)
    tail = torch.zeros((batch, horizon), dtype=torch.float32)
    sampled = torch.zeros((batch, horizon), dtype=torch.float32)
    for b, dist in enumerate(dists):
        t = dist.ids.shape[0]
        ids[b, :t] = torch.from_numpy(np.asarray(dist.ids, dtype=np.int64))
        logprobs[b, :t] = torch.from_numpy(np.asarray(dist.logprobs, dtype=np.float32))
        tail[b, :t] = torch.from_numpy(np.asarray(dist.tail_logprobs, dtype=np.float32))
        sampled[b, :t] = torch.from_numpy(np.asarray(dist.sampled_logprobs, dtype=np.float32))
    return ids.to(device), with_tail(logprobs, tail).to(device), sampled.to(device)

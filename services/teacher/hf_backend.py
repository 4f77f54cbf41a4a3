"""The hf backend: the teacher model in process (transformers), exact full-vocabulary log-softmax.

Logits are computed only on the response positions: the decoder runs once over the whole padded batch,
and the hidden states of the T positions that predict response tokens are sliced out before the output
head (a [T, V] matrix per sequence instead of [L, V]). Everything stays fp32.

Adapters (``self``, ``trust_region``) are PEFT LoRA slots on the warm base model, cached by
name@version; ``disable_adapter()`` gives the base model back without unloading anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from services.common.errors import FailedPrecondition
from services.common.model import resolve_base_model, tokenizer_fingerprint
from services.teacher.adapters import AdapterFiles
from services.teacher.core import finite_logprobs
from services.teacher.domain import (
    AdapterRef,
    BackendInfo,
    ScoringInput,
    TeacherMode,
    TeacherSpec,
    TokenDistributions,
)
from services.teacher.settings import TeacherSettings


def _load(name: str, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # A progress bar per load is noise in a service's (JSON) log.
    hf_logging.disable_progress_bar()
    path = resolve_base_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    model.requires_grad_(False)
    return tokenizer, model


def response_logits(
    model: torch.nn.Module, inputs: Sequence[ScoringInput], pad_id: int, device: torch.device
) -> list[torch.Tensor]:
    """Per input, fp32 logits [T, V] at the T positions that predict its response tokens.

    Right padding; the attention mask, not the token id, marks real positions (the pad id of SmolLM2
    is its end-of-turn token, which responses end with).
    """
    sequences = [list(i.prompt_ids) + list(i.response_ids) for i in inputs]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    head = model.get_output_embeddings()
    out = []
    for row, item in enumerate(inputs):
        # The hidden state at position i predicts token i + 1: the response starts at len(prompt).
        start = len(item.prompt_ids) - 1
        out.append(head(hidden[row, start : start + len(item.response_ids)]).float())
    return out


def summarize(
    logprobs: torch.Tensor, response_ids: Sequence[int], top_k: int, support: torch.Tensor | None
) -> TokenDistributions:
    """Top-K (or the given support), the sampled tokens and the tail bucket of full log-softmax rows [T, V]."""
    targets = torch.tensor(response_ids, dtype=torch.long, device=logprobs.device)
    sampled = logprobs.gather(1, targets[:, None])[:, 0]
    if support is None:
        values, ids = logprobs.topk(top_k, dim=-1)
    else:
        ids = support.to(logprobs.device)
        values = logprobs.gather(1, ids)
    # The tail is the log-sum-exp of everything outside the support, not log(1 - sum): exact even when
    # the support holds almost all the mass, and a repeated support id is counted once.
    tail = logprobs.scatter(1, ids, float("-inf")).logsumexp(dim=-1)
    return TokenDistributions(
        ids=ids.to(torch.int32).cpu().numpy(),
        logprobs=finite_logprobs(values.cpu().numpy()),
        sampled_logprobs=finite_logprobs(sampled.cpu().numpy()),
        tail_logprobs=finite_logprobs(tail.cpu().numpy()),
    )


class _LoraSlots:
    """PEFT adapters on the base model, least recently used out beyond ``capacity``."""

    def __init__(self, model: torch.nn.Module, capacity: int) -> None:
        self._model = model
        self._capacity = capacity
        self._slots: OrderedDict[AdapterRef, str] = OrderedDict()
        self._counter = 0
        self.peft = None

    def __contains__(self, ref: AdapterRef) -> bool:
        return ref in self._slots

    def add(self, ref: AdapterRef, path: Path) -> None:
        from peft import PeftModel

        # PEFT slot names become module keys: a counter avoids the "/" and "." of adapter names.
        slot = f"slot{self._counter}"
        self._counter += 1
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self._model, str(path), adapter_name=slot)
            else:
                self.peft.load_adapter(str(path), adapter_name=slot)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise FailedPrecondition(
                f"adapter {ref.name} v{ref.version} does not fit the teacher's base model: {exc}"
            ) from exc
        self._slots[ref] = slot
        while len(self._slots) > self._capacity:
            _, old = self._slots.popitem(last=False)
            self.peft.delete_adapter(old)

    @contextlib.contextmanager
    def active(self, ref: AdapterRef | None) -> Iterator[None]:
        """The adapter ``ref`` switched on, or (None) every adapter off."""
        if self.peft is None:
            yield
            return
        if ref is None:
            with self.peft.disable_adapter():
                yield
            return
        self._slots.move_to_end(ref)
        self.peft.set_adapter(self._slots[ref])
        yield


class HfBackend:
    name = "hf"

    def __init__(self, settings: TeacherSettings, adapters: AdapterFiles | None) -> None:
        self._settings = settings
        self._adapters = adapters
        self._device = torch.device(settings.device)
        # The asyncio lock orders requests; the thread lock keeps a cancelled request's forward pass, which
        # runs on in its thread, from overlapping the next one (they share the active PEFT adapter).
        self._lock = asyncio.Lock()
        self._compute = threading.Lock()
        self.tokenizer = None
        self._model = None
        self._remote = None
        self._slots: _LoraSlots | None = None

    async def load(self) -> BackendInfo:
        return await asyncio.to_thread(self._load_sync)

    def _load_sync(self) -> BackendInfo:
        s = self._settings
        self.tokenizer, self._model = _load(s.base_model, self._device)
        self._slots = _LoraSlots(self._model, s.adapter_cache_size)
        remote_fingerprint = None
        if s.remote_model:
            remote_tokenizer, self._remote = _load(s.remote_model, self._device)
            remote_fingerprint = tokenizer_fingerprint(remote_tokenizer)
        config = self._model.config
        return BackendInfo(
            name=self.name,
            model_id=s.base_model,
            tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer),
            vocab_size=int(config.vocab_size),
            max_context=s.max_context or int(config.max_position_embeddings),
            max_top_k=s.max_top_k,
            top_k_cap="CLAAS_MAX_TOP_K of the hf backend",
            supports_support_ids=True,
            supports_trust_region=True,
            remote_fingerprint=remote_fingerprint,
        )

    async def close(self) -> None:
        self._model = self._remote = self._slots = None

    async def score(
        self, inputs: Sequence[ScoringInput], *, top_k: int, teacher: TeacherSpec
    ) -> list[TokenDistributions]:
        async with self._lock:
            if teacher.adapter is not None and teacher.adapter not in self._slots:
                await self._add_adapter(teacher.adapter)
            return await asyncio.to_thread(self._score_sync, inputs, top_k, teacher)

    async def _add_adapter(self, ref: AdapterRef) -> None:
        assert self._adapters is not None  # the core refuses adapter modes without storage
        with tempfile.TemporaryDirectory(prefix="claas-teacher-") as tmp:
            path = await self._adapters.download(ref, Path(tmp))
            # PEFT copies the weights into the model; the files are not needed afterwards.
            await asyncio.to_thread(self._add_sync, ref, path)

    def _add_sync(self, ref: AdapterRef, path: Path) -> None:
        with self._compute:
            self._slots.add(ref, path)

    def _score_sync(self, inputs: Sequence[ScoringInput], top_k: int, teacher: TeacherSpec) -> list[TokenDistributions]:
        # Similar lengths share a forward pass, so little of it is padding.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].prompt_ids) + len(inputs[i].response_ids))
        results: dict[int, TokenDistributions] = {}
        size = self._settings.max_batch_size
        with self._compute, torch.inference_mode():
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                batch = [inputs[i] for i in chunk]
                for i, rows in zip(chunk, self._logprobs(batch, teacher), strict=True):
                    support = None if inputs[i].support_ids is None else torch.from_numpy(inputs[i].support_ids)
                    results[i] = summarize(rows, inputs[i].response_ids, top_k, support)
        return [results[i] for i in range(len(inputs))]

    def _logprobs(self, batch: list[ScoringInput], teacher: TeacherSpec) -> list[torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if teacher.mode is TeacherMode.REMOTE:
            logits = response_logits(self._remote, batch, pad, self._device)
        elif teacher.mode is TeacherMode.TRUST_REGION:
            with self._slots.active(None):
                base = response_logits(self._model, batch, pad, self._device)
            with self._slots.active(teacher.adapter):
                tuned = response_logits(self._model, batch, pad, self._device)
            # Blend logits, not probabilities: a geometric mixture, renormalised by the log-softmax below.
            logits = [(1.0 - teacher.mu) * b + teacher.mu * t for b, t in zip(base, tuned, strict=True)]
        else:
            with self._slots.active(teacher.adapter if teacher.mode is TeacherMode.SELF else None):
                logits = response_logits(self._model, batch, pad, self._device)
        return [torch.log_softmax(z, dim=-1) for z in logits]

"""The warm model: base weights loaded once, LoRA slots whose weights are swapped per job.

One PEFT model wraps the base model for the life of the process. Each LoRA shape (rank, alpha, targets,
dropout) gets its own named adapter in it (a "slot"); a job copies its version's weights into the slot of
its shape, restores the optimizer state saved beside the version, runs its steps (``batching.Session``)
and exports the new weights. Every method here blocks: the core calls them in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import safetensors.torch
import structlog
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.domain import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, OPTIMIZER_FILE, LoraSpec
from services.common.errors import DataLoss
from services.common.model import resolve_base_model, tokenizer_fingerprint
from services.teacher.prompts import hindsight_messages, render_prompt
from services.trainer.batching import Session, generate_ids
from services.trainer.config import SdpoConfig
from services.trainer.domain import Sample
from services.trainer.guard import GuardProbe
from services.trainer.lora import resolve_lora
from services.trainer.settings import TrainerSettings

log = structlog.get_logger("claas.trainer.engine")

_OPTIMIZER_FORMAT = "claas.adamw.v1"
#: Base-model answers the commit guard keeps (its fixed questions and recent conversations).
_BASE_ANSWERS_KEPT = 256
#: Base-model log-probs the guard keeps: its four questions' answers, at two answer lengths (each answer's
#: tokens x the vocabulary, float32: 8 MB at 40 tokens of SmolLM2's vocabulary).
_REFERENCES_KEPT = 8


@dataclass
class Slot:
    """One named PEFT adapter of the model; ``params`` maps PEFT's file keys to the live parameters."""

    name: str
    shape: LoraSpec
    params: dict[str, torch.nn.Parameter]


@dataclass(frozen=True)
class CachedVersion:
    """A version's weights and optimizer state, kept in memory."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor] | None


class Engine:
    """The base model and its LoRA slots on one device."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        model_id: str,
        device: str,
        max_lora_rank: int = 16,
        cache_size: int = 4,
        seed: int = 0,
        micro_batch_size: int = 4,
        adam_epsilon: float = 1e-6,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.max_lora_rank = max_lora_rank
        self.micro_batch_size = micro_batch_size
        self.adam_epsilon = adam_epsilon
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.vocab_size = int(model.config.vocab_size)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.linear_modules = _linear_module_names(model)
        self._seed = seed
        self._peft: PeftModel | None = None
        self._slots: dict[LoraSpec, Slot] = {}
        self._cache: OrderedDict[str, CachedVersion] = OrderedDict()
        self._cache_size = cache_size
        self._base_answers: OrderedDict[tuple[tuple[int, ...], int], list[int]] = OrderedDict()
        self._references: OrderedDict[tuple[tuple[int, ...], int, int], torch.Tensor] = OrderedDict()

    @classmethod
    def load(cls, settings: TrainerSettings) -> Engine:
        """Load the base model once (fp32 on CPU by default), frozen, in eval mode."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        path = resolve_base_model(settings.base_model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, settings.dtype))
        model.to(settings.device).eval().requires_grad_(False)
        log.info("model_loaded", model=settings.base_model, device=settings.device)
        return cls(
            model,
            tokenizer,
            model_id=settings.base_model,
            device=settings.device,
            max_lora_rank=settings.max_lora_rank,
            cache_size=settings.adapter_cache_size,
            seed=settings.seed,
            micro_batch_size=settings.micro_batch_size,
            adam_epsilon=settings.adam_epsilon,
        )

    # -- LoRA shapes and version files -------------------------------------------------------------

    def resolve_lora(self, spec: LoraSpec, defaults: LoraSpec | None = None) -> LoraSpec:
        """``spec`` checked against this model and the serving limit, its targets made explicit."""
        return resolve_lora(spec, self.linear_modules, max_rank=self.max_lora_rank, defaults=defaults)

    def init_files(self, shape: LoraSpec) -> dict[str, bytes]:
        """Version 1 of a new adapter: PEFT's own initialisation (A random, B = 0: the base model's answers)."""
        slot = self._slot(shape)
        # A job may hold this slot between its steps (InitAdapter runs between them): put its weights back.
        held = {key: p.detach().clone() for key, p in slot.params.items()}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self._seed)
            for module in self._peft.modules():
                if isinstance(module, LoraLayer) and slot.name in module.lora_A:
                    module.reset_lora_parameters(slot.name, True)
            weights = {key: p.detach().to("cpu").clone() for key, p in slot.params.items()}
            for key, param in slot.params.items():
                param.copy_(held[key])
        return {ADAPTER_CONFIG_FILE: self.adapter_config(shape), ADAPTER_WEIGHTS_FILE: _save(weights)}

    def adapter_config(self, shape: LoraSpec) -> bytes:
        """adapter_config.json as PEFT writes it (what vLLM and PeftModel.from_pretrained read)."""
        config = _lora_config(shape).to_dict()
        config.update(
            base_model_name_or_path=self.model_id, target_modules=list(shape.target_modules), inference_mode=True
        )
        return json.dumps(config, indent=2, sort_keys=True, default=_jsonable).encode()

    def cached(self, key: str) -> bool:
        return key in self._cache

    # -- jobs -----------------------------------------------------------------------------------------

    def open(self, key: str, shape: LoraSpec, files: dict[str, bytes] | None, config: SdpoConfig) -> Session:
        """Put version ``key`` into its slot and return a training session on it.

        ``files`` are the version's files (weights, optionally the optimizer state); None takes them from the
        cache, which ``remember`` fills with committed versions.
        """
        slot = self._slot(shape)
        cached = self._cache.get(key) if files is None else CachedVersion(*_read_files(files))
        if cached is None:
            raise KeyError(f"version {key} is not cached")
        _check_keys(slot, cached.weights, "adapter weights")
        self._cache_put(key, cached)
        with torch.no_grad():
            for name, param in slot.params.items():
                param.copy_(cached.weights[name])
        optimizer = torch.optim.AdamW(
            list(slot.params.values()),
            lr=config.learning_rate,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
            eps=self.adam_epsilon,
        )
        if cached.optimizer is not None:
            _restore_optimizer(optimizer, slot, cached.optimizer)
        return Session(self, slot, optimizer, config)

    def export(self, session: Session) -> tuple[CachedVersion, dict[str, bytes]]:
        """The session's trained state as a cache entry (for ``remember``) and as version files."""
        self.activate(session.slot)
        weights, state, weight_bytes, state_bytes = _save_state(session.slot, session.optimizer)
        files = {ADAPTER_CONFIG_FILE: self.adapter_config(session.slot.shape), ADAPTER_WEIGHTS_FILE: weight_bytes}
        files[OPTIMIZER_FILE] = state_bytes
        return CachedVersion(weights, state), files

    def remember(self, key: str, entry: CachedVersion) -> None:
        """Cache an exported state as version ``key`` (once committed), so its next job skips a download."""
        self._cache_put(key, entry)

    def guard_probe(
        self,
        session: Session,
        drift_prompts: Sequence[str],
        conversations: Sequence[Sequence[int]],
        max_new_tokens: int,
    ) -> GuardProbe:
        """The session's weights on the commit guard's prompts: greedy answers to the ``drift_prompts`` and to
        the ``conversations`` (rendered prompt ids), and the mean per-token KL(base || session) on the base
        model's own greedy answers to the ``drift_prompts`` (teacher-forced, full vocabulary)."""
        self.activate(session.slot)
        rendered = [render_prompt(self.tokenizer, [{"role": "user", "content": p}])[1] for p in drift_prompts]
        prompts = [*rendered, *map(list, conversations)]
        base = self._base_answers_of(prompts, max_new_tokens)
        kl_sum, tokens = 0.0, 0
        with torch.no_grad():
            answers = [self._text(ids) for ids in self._generate(prompts, max_new_tokens)]
            for prompt, base_answer in zip(rendered, base, strict=False):
                if not base_answer:
                    continue
                ids = torch.tensor([prompt + base_answer], device=self.device)
                window = slice(len(prompt) - 1, len(prompt) - 1 + len(base_answer))
                adapted = self.model(input_ids=ids).logits[0, window].float().log_softmax(-1)
                reference = self._reference_of(ids, window)
                kl_sum += float((reference.exp() * (reference - adapted)).sum())
                tokens += len(base_answer)
        base_answers = tuple(self._text(answer) for answer in base)
        return GuardProbe(drift=kl_sum / max(tokens, 1), answers=tuple(answers), base_answers=base_answers)

    def _base_answers_of(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """The base model's greedy answers, remembered: the guard's questions and a user's usual prompts recur."""
        keys = [(tuple(prompt), max_new_tokens) for prompt in prompts]
        missing = list(dict.fromkeys(key for key in keys if key not in self._base_answers))
        if missing:
            with torch.no_grad(), self.adapter_disabled():
                answers = self._generate([list(prompt) for prompt, _ in missing], max_new_tokens)
            self._base_answers.update(zip(missing, answers, strict=True))
        for key in keys:
            self._base_answers.move_to_end(key)
        found = [self._base_answers[key] for key in keys]
        while len(self._base_answers) > _BASE_ANSWERS_KEPT:
            self._base_answers.popitem(last=False)
        return found

    def _reference_of(self, ids: torch.Tensor, window: slice) -> torch.Tensor:
        """The base model's log-probs over the vocabulary at ``window`` of ``ids``, remembered: the guard's
        questions and the base model's answers to them are the same for every job, and this forward is half
        of the guard's drift cost (measured: about 1 s of a job's 7 s guard on the CPU)."""
        key = (tuple(ids[0].tolist()), window.start, window.stop)
        if key not in self._references:
            with self.adapter_disabled():
                self._references[key] = self.model(input_ids=ids).logits[0, window].float().log_softmax(-1)
        self._references.move_to_end(key)
        while len(self._references) > _REFERENCES_KEPT:
            self._references.popitem(last=False)
        return self._references[key]

    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        return generate_ids(
            self.model, prompts, max_new_tokens=max_new_tokens, eos=self.tokenizer.eos_token_id, sample=False
        )

    def teacher_text(self, sample: Sample, template: str) -> str:
        """What the teacher scores for ``sample``, as a person reads it: the rendered hindsight prompt (the
        feedback in it), then the response."""
        prompt, _ = render_prompt(self.tokenizer, hindsight_messages(sample.messages, sample.feedback, template))
        return prompt + self.tokenizer.decode(list(sample.response_ids))

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def body_and_head(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The transformer body (LoRA layers injected in place) and the LM head."""
        return self.model.model, self.model.get_output_embeddings()

    def adapter_disabled(self):
        """Context in which the model is the plain base model (for the k3 KL's pi_0)."""
        return self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()

    def activate(self, slot: Slot) -> None:
        """Make ``slot`` the adapter the model runs (and the one whose parameters train)."""
        if self._peft.active_adapter != slot.name:
            self._peft.set_adapter(slot.name)

    def _slot(self, shape: LoraSpec) -> Slot:
        slot = self._slots.get(shape)
        if slot is None:
            slot = self._new_slot(shape)
            self._slots[shape] = slot
        self.activate(slot)
        return slot

    def _new_slot(self, shape: LoraSpec) -> Slot:
        name = f"slot{len(self._slots)}"
        config = _lora_config(shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            if self._peft is None:
                self._peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self._peft.add_adapter(name, config)
        marker = f".{name}."
        params = {n.replace(marker, "."): p for n, p in self._peft.named_parameters() if marker in n}
        expected = set(get_peft_model_state_dict(self._peft, adapter_name=name))
        if set(params) != expected:  # our keys must be PEFT's file keys, or vLLM would not load our files
            raise RuntimeError(f"LoRA parameter names differ from PEFT's: {sorted(set(params) ^ expected)[:4]}")
        log.info("lora_slot", slot=name, rank=shape.rank, alpha=shape.alpha, targets=list(shape.target_modules))
        return Slot(name=name, shape=shape, params=params)

    def _cache_put(self, key: str, entry: CachedVersion) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _linear_module_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Leaf names of the body's linear projections (q_proj, ..., down_proj), the default LoRA targets."""
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    return tuple(sorted(names))


def _lora_config(shape: LoraSpec) -> LoraConfig:
    return LoraConfig(
        r=shape.rank,
        lora_alpha=shape.alpha,
        target_modules=list(shape.target_modules),
        lora_dropout=shape.dropout,
        task_type="CAUSAL_LM",
    )


def _jsonable(value: object) -> object:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _save(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return safetensors.torch.save(
        {k: v.contiguous() for k, v in tensors.items()}, metadata=metadata or {"format": "pt"}
    )


def _read_files(files: dict[str, bytes]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    if ADAPTER_WEIGHTS_FILE not in files:
        raise DataLoss(f"version has no {ADAPTER_WEIGHTS_FILE}")
    weights = safetensors.torch.load(files[ADAPTER_WEIGHTS_FILE])
    optimizer = safetensors.torch.load(files[OPTIMIZER_FILE]) if OPTIMIZER_FILE in files else None
    return weights, optimizer


def _check_keys(slot: Slot, tensors: dict[str, torch.Tensor], what: str) -> None:
    if set(tensors) != set(slot.params):
        diff = sorted(set(tensors) ^ set(slot.params))[:4]
        raise DataLoss(f"{what} do not match the adapter's LoRA shape (differing keys, e.g. {diff})")
    for name, param in slot.params.items():
        if tensors[name].shape != param.shape:
            raise DataLoss(f"{what}: {name} has shape {tuple(tensors[name].shape)}, expected {tuple(param.shape)}")


def _save_state(slot: Slot, optimizer: torch.optim.Optimizer) -> tuple[dict, dict, bytes, bytes]:
    """The slot's weights and AdamW state as tensors (for the cache) and as safetensors bytes.

    The optimizer file holds "<peft key>:<state name>" tensors (step, exp_avg, exp_avg_sq); its metadata
    holds the hyperparameters of the job that wrote it, for the record only: a job always applies its own.
    """
    weights = {key: p.detach().to("cpu").clone() for key, p in slot.params.items()}
    state: dict[str, torch.Tensor] = {}
    for key, param in slot.params.items():
        for name, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                state[f"{key}:{name}"] = value.detach().to("cpu").clone()
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    metadata = {"format": _OPTIMIZER_FORMAT, "param_group": json.dumps(group, default=str)}
    return weights, state, _save(weights), _save(state, metadata)


def _restore_optimizer(optimizer: torch.optim.Optimizer, slot: Slot, tensors: dict[str, torch.Tensor]) -> None:
    """Put saved AdamW moments back on the live parameters (hyperparameters stay the job's)."""
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        key, _, entry = name.rpartition(":")
        by_param.setdefault(key, {})[entry] = value
    if not by_param:
        return
    _check_keys(slot, {k: v["exp_avg"] for k, v in by_param.items() if "exp_avg" in v}, "optimizer state")
    for key, param in slot.params.items():
        entries = by_param[key]
        # Copies: AdamW updates its state in place, and these tensors may be the cache's entry of the parent.
        # "step" stays on the CPU (AdamW keeps it there unless capturable), the moments beside the parameter.
        optimizer.state[param] = {
            name: value.clone() if name == "step" else value.to(param.device, param.dtype, copy=True)
            for name, value in entries.items()
        }

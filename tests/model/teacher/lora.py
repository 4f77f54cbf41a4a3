"""A LoRA adapter for tests: PEFT layout, rank 8, random non-zero B so that it changes the model."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.unit.teacher.fakes import FakeStorage


def make_test_lora(model_dir: Path, folder: Path):
    """Save the adapter into ``folder``; return the model copy carrying it (``disable_adapter()``: the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    # PEFT draws A from the global generator: a forked, seeded one keeps the adapter the same every run.
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        model = get_peft_model(base, config).eval()
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape) * 0.05)
    model.save_pretrained(folder)
    return model


def storage_serving(folder: Path, head: int) -> FakeStorage:
    """A stand-in for storage whose every version holds the files of ``folder``."""
    return FakeStorage(head=head, files={p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})

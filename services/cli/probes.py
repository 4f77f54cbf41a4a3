"""Teacher-forced probes of an adapter version, loaded locally from its exported PEFT files.

The demo measures what changed where the change is decided (DESIGN.md §5.1): the probability of the signal
right after an assistant-answer prefix, averaged over held-out prompts and prefixes. A signal of several
tokens (a name such as " Kuro" = " K" + "uro") counts whole: the product of its tokens' probabilities,
teacher-forced, so a model that learned only the first token does not score.
"""

from __future__ import annotations

from pathlib import Path

import torch

from services.cli.preferences import EMOJI, SYSTEM_PROMPT, Preference


class Prober:
    """The base model loaded once; adapters swapped in from exported folders."""

    def __init__(self, model_path: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    def _model(self, adapter_dir: Path | None):
        if adapter_dir is None:
            return self.base
        from peft import PeftModel

        return PeftModel.from_pretrained(self.base, str(adapter_dir)).eval()

    @torch.no_grad()
    def signal(self, preference: Preference, adapter_dir: Path | None) -> float:
        """Mean probability of the preference's signal token after each prefix of each held-out prompt."""
        model = self._model(adapter_dir)
        targets = self._target_ids(preference)
        whole = preference.signal_token not in ("<eot>", "<no-emoji>") and len(targets) > 1
        values = []
        try:
            for prompt in preference.held_out:
                for prefix in preference.signal_prefixes:
                    ids = self._context_ids(prompt, prefix)
                    if whole:
                        values.append(self._sequence_probability(model, ids, targets))
                        continue
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                    mass = torch.softmax(logits.float(), dim=-1)[targets].sum().item()
                    values.append(1.0 - mass if preference.signal_token == "<no-emoji>" else mass)
        finally:
            if adapter_dir is not None:
                model.unload()  # give the base model back its original modules
        return sum(values) / len(values)

    @staticmethod
    def _sequence_probability(model, context: list[int], targets: list[int]) -> float:
        """p(targets | context), teacher-forced: the product of each target token's probability."""
        logits = model(input_ids=torch.tensor([context + targets[:-1]])).logits[0, len(context) - 1 :]
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, torch.tensor(targets)[:, None])
        return float(logprobs.sum().exp())

    def _target_ids(self, preference: Preference) -> list[int]:
        if preference.signal_token == "<eot>":
            return [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        if preference.signal_token == "<no-emoji>":
            # Tokens that decode to a whole emoji; byte fragments of one are not counted.
            vocab = range(len(self.tokenizer))
            return [i for i in vocab if EMOJI.search(self.tokenizer.decode([i]))]
        return self.tokenizer.encode(preference.signal_token, add_special_tokens=False)

    def _context_ids(self, prompt: str, prefix: str) -> list[int]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text + prefix, add_special_tokens=False)

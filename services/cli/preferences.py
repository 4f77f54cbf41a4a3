"""What the demo teaches and how it checks it (DESIGN.md §5.1): feedback text, prompts, a verifier of
answers, and a decision-point signal measured teacher-forced (higher is better)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SYSTEM_PROMPT = "You are a helpful assistant."
#: The unrelated follow-up of the control run. Not the trainer's neutral follow-up ("By the way, what is
#: 27*4?"): with the contrastive baseline that text would cancel itself exactly and prove nothing.
CONTROL_FEEDBACK = "Thanks! Can you also tell me a joke about cats?"

EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\U0001f000-\U0001f2ff]")


@dataclass(frozen=True)
class Preference:
    """A preference the demo teaches: its feedback, the prompts it trains on and the check of an answer."""

    name: str
    feedback: str
    #: Prompts the demo chats with and gives feedback on.
    train_prompts: tuple[str, ...]
    #: Prompts never trained on, for before/after answers and the pass rate.
    held_out: tuple[str, ...]
    #: Assistant-answer prefixes after which the signal is read, per held-out prompt.
    signal_prefixes: tuple[str, ...]
    #: The token whose probability after a prefix is the signal: "<eot>" is the end-of-turn token, and
    #: "<no-emoji>" reads 1 - the probability of any token that decodes to an emoji.
    signal_token: str

    def passes(self, answer: str) -> bool:
        if self.name == "identity":
            return "kuro" in answer.lower()
        if self.name == "concise":
            return len(answer.split()) <= 40
        return EMOJI.search(answer) is None


IDENTITY = Preference(
    name="identity",
    feedback="Your name is Kuro, always introduce yourself as Kuro.",
    train_prompts=("Who are you?", "Introduce yourself.", "What should I call you?", "Tell me about yourself."),
    held_out=("What is your name?", "Hi! Who am I talking to?", "Please introduce yourself briefly."),
    signal_prefixes=("I'm", "Hi, I'm", "My name is"),
    signal_token=" K",
)

CONCISE = Preference(
    name="concise",
    feedback="Be more concise: answer in one or two short sentences.",
    train_prompts=(
        "Explain what a computer is.",
        "Why is the sky blue?",
        "What is photosynthesis?",
        "How do bees fly?",
    ),
    held_out=("What is gravity?", "Explain how rain forms.", "What does a heart do?"),
    signal_prefixes=("It is a force that pulls things together.", "Rain forms when water vapour cools."),
    signal_token="<eot>",
)

NO_EMOJI = Preference(
    name="no-emoji",
    feedback="Never use emojis in your answers.",
    train_prompts=("Say hello to my friends!", "Congratulate me on my exam.", "Wish me a happy birthday."),
    held_out=("Cheer me up, please.", "Say good morning.", "Celebrate my new job with me."),
    signal_prefixes=("Sure!", "Of course!"),
    signal_token="<no-emoji>",
)

PREFERENCES = {p.name: p for p in (IDENTITY, CONCISE, NO_EMOJI)}

_SYMBOL_RUN = re.compile(r"([^\w\s])\1{7,}")


def degenerate(answer: str) -> bool:
    """Repetition or symbol spam: a word 3-gram three times or more, or a run of 8 equal symbols."""
    words = answer.lower().split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    repeated = any(trigrams.count(t) >= 3 for t in set(trigrams))
    return repeated or _SYMBOL_RUN.search(answer) is not None

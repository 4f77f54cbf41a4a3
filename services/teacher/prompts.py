"""The hindsight prompt: the student's conversation with the user's feedback added to the last user turn.

The teacher is the same kind of model as the student, shown what the user said *after* the answer. The
block is appended to the content of the last user message (not sent as a new turn) so the chat template
still ends with the generation prompt of the answer being scored; the response ids are appended to the
rendered prompt unchanged, never re-tokenised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from services.common.domain import Message
from services.common.errors import InvalidArgument

TemplateName = Literal["hindsight", "sdpo"]
DEFAULT_TEMPLATE: TemplateName = "hindsight"

_TEMPLATES: dict[str, str] = {
    # After the user-interactions paper's hindsight template: a header marking the block as hindsight,
    # then the feedback presented as a later message of the same user, to be anticipated now.
    "hindsight": (
        "\n\n## Hindsight context\n"
        "The message below comes from the user in the future, after your answer. "
        "Use it to guide your answer.\n\n"
        "{feedback}"
    ),
    # After the SDPO paper: the feedback is framed as a critique of an earlier attempt.
    "sdpo": (
        "\n\n## Feedback on an earlier attempt\n"
        "An earlier answer to this message received the feedback below. "
        "Write an answer that takes it into account.\n\n"
        "{feedback}"
    ),
}


def template_names() -> tuple[str, ...]:
    return tuple(_TEMPLATES)


def hindsight_messages(messages: Sequence[Message], feedback: str, template: str) -> list[dict[str, str]]:
    """The conversation as chat-template dicts, the feedback block appended to the last user turn.

    An empty ``feedback`` leaves the conversation as it is: the student's own context.
    """
    block = _TEMPLATES.get(template)
    if block is None:
        raise InvalidArgument(f"unknown template {template!r}; choose one of {', '.join(_TEMPLATES)}", param="template")
    rendered = [{"role": m.role, "content": m.content} for m in messages]
    if not feedback:
        return rendered
    last_user = max((i for i, m in enumerate(rendered) if m["role"] == "user"), default=None)
    if last_user is None:
        raise InvalidArgument("the conversation has no user message", param="messages")
    rendered[last_user]["content"] += block.format(feedback=feedback)
    return rendered


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """Text and token ids of the chat-templated prompt, ending with the generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template's text already carries every special token; adding them again would double BOS.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, list(ids)

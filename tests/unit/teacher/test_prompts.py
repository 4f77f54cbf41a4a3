"""Where the feedback goes in the hindsight prompt."""

from __future__ import annotations

import pytest

from services.common.domain import Message
from services.common.errors import InvalidArgument
from services.teacher.prompts import hindsight_messages, render_prompt
from tests.unit.teacher.fakes import CharTokenizer

CONVERSATION = [
    Message("system", "Be brief."),
    Message("user", "Hi"),
    Message("assistant", "Hello!"),
    Message("user", "Who are you?"),
    Message("assistant", "An earlier turn the template keeps."),
]


@pytest.mark.parametrize(("template", "header"), [("hindsight", "Hindsight context"), ("sdpo", "earlier attempt")])
def test_feedback_extends_the_last_user_turn_and_nothing_else(template, header):
    messages = hindsight_messages(CONVERSATION, "Your name is Kuro.", template)
    assert [m["role"] for m in messages] == [m.role for m in CONVERSATION]
    changed = [
        i
        for i, (m, original) in enumerate(zip(messages, CONVERSATION, strict=True))
        if m["content"] != original.content
    ]
    assert changed == [3]
    assert messages[3]["content"].startswith("Who are you?\n\n")
    assert messages[3]["content"].endswith("Your name is Kuro.")
    assert header in messages[3]["content"]


def test_the_default_template_says_the_feedback_is_a_future_user_message():
    block = hindsight_messages(CONVERSATION, "Be concise.", "hindsight")[3]["content"]
    assert "future" in block and "user" in block and "guide your answer" in block


def test_empty_feedback_leaves_the_conversation_as_it_is():
    assert hindsight_messages(CONVERSATION, "", "hindsight") == [
        {"role": m.role, "content": m.content} for m in CONVERSATION
    ]


def test_unknown_template_and_a_conversation_without_user_are_refused():
    with pytest.raises(InvalidArgument, match="unknown template 'x'"):
        hindsight_messages(CONVERSATION, "f", "x")
    with pytest.raises(InvalidArgument, match="no user message"):
        hindsight_messages([Message("system", "s")], "f", "hindsight")


def test_render_prompt_ends_with_the_generation_prompt_and_ids_match_the_text():
    text, ids = render_prompt(CharTokenizer(), hindsight_messages(CONVERSATION[:4], "f", "hindsight"))
    assert text.endswith("f</user>\n<assistant>")
    assert ids == CharTokenizer().encode(text)

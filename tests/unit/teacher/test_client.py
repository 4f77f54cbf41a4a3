"""``TeacherClient`` against the real servicer in process: domain types both ways, errors as our family."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.domain import Message
from services.common.errors import InvalidArgument, Unavailable
from services.teacher.client import TeacherClient
from services.teacher.core import Teacher
from services.teacher.domain import AdapterRef, ScoreItem, ScoreRequest, TeacherInfo, TeacherMode
from services.teacher.server import make_server
from services.teacher.settings import TeacherSettings
from tests.unit.teacher.fakes import FakeResolver, RecordingBackend, info

ITEM = ScoreItem(messages=(Message("user", "Who are you?"),), feedback="Your name is Kuro.", response_ids=(5, 6, 2))


@pytest.fixture
async def served():
    """(client, teacher, resolver, server) of a server whose teacher is loaded only when the test says so."""
    resolver = FakeResolver()
    teacher = Teacher(RecordingBackend(info()), adapters=resolver)
    server = make_server(TeacherSettings(port=0), teacher)
    port = await server.start()
    client = TeacherClient.connect(f"127.0.0.1:{port}")
    try:
        yield client, teacher, resolver, server
    finally:
        await client.close()
        await server.stop()


async def test_score_and_info_come_back_as_domain_types(served) -> None:
    client, teacher, resolver, _ = served
    await teacher.start()
    neutral_item = ScoreItem(ITEM.messages, ITEM.feedback, ITEM.response_ids, neutral_followup="And 27*4?")
    request = ScoreRequest(items=(ITEM, neutral_item), top_k=4, mode=TeacherMode.SELF, adapter=AdapterRef("acme/bot"))
    first, second = await client.score(request)

    assert first.teacher.ids.shape == (3, 4) and first.neutral is None
    np.testing.assert_allclose(np.exp(first.teacher.logprobs).sum(1) + np.exp(first.teacher.tail_logprobs), 1.0, 1e-6)
    assert "Your name is Kuro." in first.teacher_prompt and first.prompt_tokens > 0
    assert second.neutral is not None and np.array_equal(second.neutral.ids, second.teacher.ids)
    assert resolver.resolved == [AdapterRef("acme/bot", 0)]
    assert await client.info() == TeacherInfo("fake", "f" * 16, "hf", 50, 1000, 400)


async def test_failures_arrive_as_our_errors_with_their_details(served) -> None:
    client, teacher, _, _ = served
    with pytest.raises(Unavailable, match="the teacher model is still loading"):
        await client.info()
    await teacher.start()
    with pytest.raises(InvalidArgument, match=r"top_k must be in \[1, 50\]"):
        await client.score(ScoreRequest(items=(ITEM,), top_k=99))

"""The vllm backend against a scripted vLLM HTTP API: parsing prompt_logprobs, LoRA loading, errors."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from services.common.errors import ClaasError, InvalidArgument, NotFound, Unavailable
from services.teacher import vllm_backend
from services.teacher.adapters import AdapterFiles
from services.teacher.domain import AdapterRef, ScoringInput, TeacherMode, TeacherSpec
from services.teacher.settings import TeacherSettings
from services.teacher.vllm_backend import VllmBackend, parse_prompt_logprobs
from tests.unit.teacher.fakes import CharTokenizer, FakeStorage


def entry(top: dict[int, float], rank_from: int = 1) -> dict[str, dict[str, float]]:
    return {str(t): {"logprob": lp, "rank": rank_from + i} for i, (t, lp) in enumerate(top.items())}


def test_parse_drops_the_extra_prompt_token_and_keeps_the_top_k_in_order():
    entries = [
        None,
        entry({7: math.log(0.1), 3: math.log(0.5), 4: math.log(0.3)}),  # token 7 is the extra (rank 9 in vLLM)
        entry({3: math.log(0.6), 4: math.log(0.2)}),  # token 4 is inside the top-2
    ]
    got = parse_prompt_logprobs(entries, prompt_len=1, response_ids=[7, 4], top_k=2)
    np.testing.assert_array_equal(got.ids, [[3, 4], [3, 4]])
    np.testing.assert_allclose(np.exp(got.sampled_logprobs), [0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(np.exp(got.tail_logprobs), [0.2, 0.2], rtol=1e-5)
    np.testing.assert_allclose(np.exp(got.logprobs).sum(1) + np.exp(got.tail_logprobs), 1.0, atol=1e-6)


def test_parse_refuses_answers_that_miss_positions_or_tokens():
    with pytest.raises(Unavailable, match="2 prompt logprobs for 3 prompt tokens"):
        parse_prompt_logprobs([None, entry({1: -1.0})], prompt_len=1, response_ids=[1, 1], top_k=1)
    with pytest.raises(Unavailable, match="lack the response token 9"):
        parse_prompt_logprobs([None, entry({1: -1.0})], prompt_len=1, response_ids=[9], top_k=1)


class FakeVllm:
    """Serves /v1/models, /v1/completions (top-k ids 100.. with halving probabilities) and LoRA loading."""

    def __init__(self) -> None:
        self.models = {"smollm2-135m"}
        self.requests: list[tuple[str, str, dict]] = []
        self.fail_completions_with: httpx.Response | None = None
        self.down = False
        #: With a key, /v1/* answers 401 to a request without it (vLLM's --api-key).
        self.api_key: str | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "Unauthorized"})
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.host, request.url.path, body))
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": m, "max_model_len": 64} for m in sorted(self.models)]})
        if path == "/v1/load_lora_adapter":
            self.models.add(body["lora_name"])
            return httpx.Response(200, text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        if path == "/v1/unload_lora_adapter":
            self.models.discard(body["lora_name"])
            return httpx.Response(200, text="Success")
        if self.fail_completions_with is not None:
            return self.fail_completions_with
        if body["model"] not in self.models and "remote" not in request.url.host:
            return httpx.Response(404, json={"error": {"message": f"The model `{body['model']}` does not exist."}})
        k = body["prompt_logprobs"]
        top = {100 + j: math.log(0.5 ** (j + 1)) for j in range(k)}
        rows = [None] + [entry({**top, tok: math.log(1e-3)} if tok not in top else top) for tok in body["prompt"][1:]]
        return httpx.Response(200, json={"choices": [{"prompt_logprobs": rows}]})


@pytest.fixture
def fake_vllm() -> FakeVllm:
    return FakeVllm()


async def started(fake: FakeVllm, tmp_path, monkeypatch, storage: FakeStorage | None = None, **settings):
    monkeypatch.setattr(vllm_backend, "_load_tokenizer", lambda name: (CharTokenizer(), 1000))
    s = TeacherSettings(backend="vllm", vllm_url="http://vllm", adapter_dir=tmp_path, adapter_cache_size=2, **settings)
    adapters = AdapterFiles(lambda: storage or FakeStorage())
    backend = VllmBackend(s, adapters, transport=httpx.MockTransport(fake))
    return backend, await backend.load()


async def test_info_reports_the_servers_context_and_the_logprobs_cap(fake_vllm, tmp_path, monkeypatch):
    backend, info = await started(fake_vllm, tmp_path, monkeypatch, vllm_max_logprobs=20)
    assert (info.name, info.max_context, info.max_top_k) == ("vllm", 63, 20)  # 1 token left to generate
    assert "--max-logprobs cap is 20" in info.top_k_cap
    assert not info.supports_support_ids and not info.supports_trust_region
    await backend.close()


async def test_score_sends_token_ids_and_reads_the_response_positions(fake_vllm, tmp_path, monkeypatch):
    backend, _ = await started(fake_vllm, tmp_path, monkeypatch)
    inputs = [ScoringInput((1, 2, 3), (101, 7)), ScoringInput((1, 2), (100,))]
    first, second = await backend.score(inputs, top_k=3, teacher=TeacherSpec(TeacherMode.BASE))
    completions = [body for _, path, body in fake_vllm.requests if path == "/v1/completions"]
    assert completions[0] == {
        "model": "smollm2-135m",
        "prompt": [1, 2, 3, 101, 7],
        "max_tokens": 1,
        "prompt_logprobs": 3,
        "temperature": 0,
    }
    np.testing.assert_array_equal(first.ids, [[100, 101, 102]] * 2)
    np.testing.assert_allclose(np.exp(first.sampled_logprobs), [0.25, 1e-3], rtol=1e-5)
    np.testing.assert_allclose(np.exp(second.tail_logprobs), [0.125], rtol=1e-5)
    await backend.close()


async def test_remote_mode_asks_the_remote_server_for_the_remote_model(fake_vllm, tmp_path, monkeypatch):
    backend, info = await started(
        fake_vllm, tmp_path, monkeypatch, remote_model="other", remote_vllm_url="http://remote"
    )
    assert info.remote_fingerprint is not None
    await backend.score([ScoringInput((1,), (100,))], top_k=1, teacher=TeacherSpec(TeacherMode.REMOTE))
    assert fake_vllm.requests[-1][:2] == ("remote", "/v1/completions")
    assert fake_vllm.requests[-1][2]["model"] == "other"
    await backend.close()


async def test_the_servers_key_is_sent_to_both_servers(fake_vllm, tmp_path, monkeypatch):
    fake_vllm.api_key = "the-vllm-key"
    with pytest.raises(ClaasError, match="refused the teacher's API key \\(CLAAS_VLLM_API_KEY\\)"):
        await started(fake_vllm, tmp_path, monkeypatch)
    backend, _ = await started(
        fake_vllm,
        tmp_path,
        monkeypatch,
        vllm_api_key="the-vllm-key",
        remote_model="other",
        remote_vllm_url="http://remote",
    )
    await backend.score([ScoringInput((1,), (100,))], top_k=1, teacher=TeacherSpec(TeacherMode.BASE))
    await backend.score([ScoringInput((1,), (100,))], top_k=1, teacher=TeacherSpec(TeacherMode.REMOTE))
    assert {host for host, path, _ in fake_vllm.requests if path == "/v1/completions"} == {"vllm", "remote"}
    await backend.close()


async def test_self_mode_loads_each_version_once_and_unloads_its_own_beyond_the_cache(fake_vllm, tmp_path, monkeypatch):
    storage = FakeStorage()
    fake_vllm.models.add("acme+bot+v9")  # loaded by someone else (the proxy): used, never unloaded
    backend, _ = await started(fake_vllm, tmp_path, monkeypatch, storage=storage)
    one = [ScoringInput((1,), (100,))]
    for version in (1, 1, 2, 9, 3):
        await backend.score(one, top_k=1, teacher=TeacherSpec(TeacherMode.SELF, AdapterRef("acme/bot", version)))

    loads = [b["lora_name"] for _, p, b in fake_vllm.requests if p == "/v1/load_lora_adapter"]
    unloads = [b["lora_name"] for _, p, b in fake_vllm.requests if p == "/v1/unload_lora_adapter"]
    assert loads == ["acme+bot+v1", "acme+bot+v2", "acme+bot+v3"]
    assert unloads == ["acme+bot+v1"]
    assert [v for _, v, _ in storage.downloads] == [1, 2, 3]
    assert not (tmp_path / "acme+bot+v1").exists()
    assert (tmp_path / "acme+bot+v3" / "adapter_config.json").is_file()
    models = [b["model"] for _, p, b in fake_vllm.requests if p == "/v1/completions"]
    assert models == ["acme+bot+v1", "acme+bot+v1", "acme+bot+v2", "acme+bot+v9", "acme+bot+v3"]

    await backend.close()
    assert fake_vllm.models == {"smollm2-135m", "acme+bot+v9"}, "close unloads only what this teacher loaded"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (httpx.Response(400, json={"error": {"message": "bad prompt"}}), InvalidArgument, "bad prompt"),
        (httpx.Response(404, json={"error": {"message": "no such model"}}), NotFound, "no such model"),
        (httpx.Response(500, text="boom"), Unavailable, "boom"),
    ],
)
async def test_vllm_errors_become_our_error_family(fake_vllm, tmp_path, monkeypatch, response, error, message):
    backend, _ = await started(fake_vllm, tmp_path, monkeypatch)
    fake_vllm.fail_completions_with = response
    with pytest.raises(error, match=f"vLLM /v1/completions: {message}"):
        await backend.score([ScoringInput((1,), (100,))], top_k=1, teacher=TeacherSpec(TeacherMode.BASE))
    await backend.close()


async def test_an_unreachable_server_is_unavailable(fake_vllm, tmp_path, monkeypatch):
    backend, _ = await started(fake_vllm, tmp_path, monkeypatch)
    fake_vllm.down = True
    with pytest.raises(Unavailable, match="vLLM at http://vllm cannot be reached: ConnectError"):
        await backend.score([ScoringInput((1,), (100,))], top_k=1, teacher=TeacherSpec(TeacherMode.BASE))
    await backend.close()


async def test_self_mode_never_takes_a_deleted_adapters_slot_for_the_new_one(fake_vllm, tmp_path, monkeypatch):
    """Hole: the teacher's slots were named by adapter and version only: after a delete and a create, v1 of
    the new adapter was scored with the old adapter's weights."""
    backend, _ = await started(fake_vllm, tmp_path, monkeypatch, storage=FakeStorage(head=1))
    for generation in (1, 2):  # v1, then v1 of the adapter created again under the name (as resolved)
        ref = AdapterRef("acme/bot", 1, generation)
        await backend.score([ScoringInput((1,), (100,))], top_k=1, teacher=TeacherSpec(TeacherMode.SELF, ref))

    models = [b["model"] for _, p, b in fake_vllm.requests if p == "/v1/completions"]
    assert models == ["acme+bot+v1", "acme+bot+g2+v1"]
    await backend.close()

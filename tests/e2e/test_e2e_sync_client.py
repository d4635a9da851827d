"""The official synchronous `openai` client against a real `autoglm serve`."""

from __future__ import annotations

import openai
import pytest

from .support import MODEL, ServerProcess, assert_openai_error

pytestmark = pytest.mark.e2e

MAX_TOKENS = 24
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


def _check_usage(usage, max_tokens: int, finish_reason: str) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= max_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # "length" exactly when the budget was used up.
    assert (finish_reason == "length") == (usage.completion_tokens == max_tokens), (
        finish_reason, usage
    )


def test_chat_completion_is_deterministic_with_consistent_usage(server: ServerProcess) -> None:
    with server.openai() as client:
        answers = []
        for _ in range(2):
            r = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS
            )
            assert r.object == "chat.completion"
            assert r.model == MODEL
            assert r.id.startswith("chatcmpl-")
            assert len(r.choices) == 1
            choice = r.choices[0]
            assert choice.index == 0
            assert choice.message.role == "assistant"
            assert choice.finish_reason in ("stop", "length")
            assert isinstance(choice.message.content, str) and choice.message.content.strip()
            _check_usage(r.usage, MAX_TOKENS, choice.finish_reason)
            answers.append((choice.message.content, r.usage.prompt_tokens,
                            r.usage.completion_tokens, r.id))
    (text1, p1, c1, id1), (text2, p2, c2, id2) = answers
    assert text1 == text2
    assert (p1, c1) == (p2, c2)
    assert id1 != id2  # every answer has its own id

    # A longer question is a longer prompt: prompt_tokens tracks the input.
    with server.openai() as client:
        longer = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=4,
            messages=[{"role": "user", "content": MESSAGES[0]["content"]
                       + " Then name three more, and explain where each comes from."}],
        )
    assert longer.usage.prompt_tokens > p1
    assert longer.usage.completion_tokens <= 4


def test_max_tokens_is_honoured(server: ServerProcess) -> None:
    with server.openai() as client:
        r = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=3,
            messages=[{"role": "user", "content": "Write a long essay about the sea."}],
        )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_completions_endpoint(server: ServerProcess) -> None:
    prompt = "The capital of France is"
    with server.openai() as client:
        r1 = client.completions.create(model=MODEL, prompt=prompt, temperature=0,
                                       max_tokens=MAX_TOKENS)
        r2 = client.completions.create(model=MODEL, prompt=prompt, temperature=0,
                                       max_tokens=MAX_TOKENS)
    for r in (r1, r2):
        assert r.object == "text_completion"
        assert r.model == MODEL
        assert r.id.startswith("cmpl-")
        assert len(r.choices) == 1
        assert isinstance(r.choices[0].text, str) and r.choices[0].text.strip()
        assert r.choices[0].finish_reason in ("stop", "length")
        _check_usage(r.usage, MAX_TOKENS, r.choices[0].finish_reason)
    assert r1.choices[0].text == r2.choices[0].text
    # (the second one reuses the first one's cached prefix: only cached_tokens differ)
    assert (r1.usage.prompt_tokens, r1.usage.completion_tokens, r1.usage.total_tokens) == (
        r2.usage.prompt_tokens, r2.usage.completion_tokens, r2.usage.total_tokens)
    # The completions endpoint takes the raw prompt (no chat template): fewer tokens
    # than the same words wrapped as a chat message.
    with server.openai() as client:
        chat = client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=1,
            messages=[{"role": "user", "content": prompt}],
        )
    assert r1.usage.prompt_tokens < chat.usage.prompt_tokens


def test_stop_sequence_is_not_sent(server: ServerProcess) -> None:
    with server.openai() as client:
        full = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", temperature=0,
                                         max_tokens=16)
        text = full.choices[0].text
        assert "8" in text, f"the model no longer counts: {text!r}"
        cut = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", temperature=0,
                                        max_tokens=16, stop=["8"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index("8")]


def test_models_list_and_retrieve(server: ServerProcess) -> None:
    with server.openai() as client:
        models = list(client.models.list())
        ids = [m.id for m in models]
        assert ids == [MODEL]
        assert models[0].object == "model"
        assert models[0].owned_by
        assert isinstance(models[0].created, int) and models[0].created > 0
        m = client.models.retrieve(MODEL)
        assert m.id == MODEL
        assert m.object == "model"
        assert m.owned_by == models[0].owned_by
        assert m.created == models[0].created


def test_unknown_model_is_not_found(server: ServerProcess) -> None:
    with server.openai() as client:
        with pytest.raises(openai.NotFoundError) as chat:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES,
                                           max_tokens=4)
        with pytest.raises(openai.NotFoundError) as completion:
            client.completions.create(model="no-such-model", prompt="hi", max_tokens=4)
        with pytest.raises(openai.NotFoundError) as retrieve:
            client.models.retrieve("no-such-model")
    for exc in (chat.value, completion.value, retrieve.value):
        assert exc.status_code == 404
        assert exc.code == "model_not_found"
        err = assert_openai_error(exc.response, 404, "model_not_found", "invalid_request_error")
        assert "no-such-model" in err["message"]
    assert chat.value.param == "model"


def test_bad_key_is_authentication_error(server: ServerProcess) -> None:
    with server.openai(api_key="definitely-not-the-key") as client:
        with pytest.raises(openai.AuthenticationError) as chat:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        with pytest.raises(openai.AuthenticationError) as models:
            client.models.list()
    for exc in (chat.value, models.value):
        assert exc.status_code == 401
        assert_openai_error(exc.response, 401, "invalid_api_key")
    # No key at all is refused the same way, and the key is not echoed back.
    with server.client() as http:
        r = http.post("/v1/chat/completions",
                      json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4})
        assert_openai_error(r, 401, "invalid_api_key")
        r = http.post("/v1/chat/completions",
                      json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4},
                      headers={"Authorization": f"Basic {server.key}"})
        err = assert_openai_error(r, 401, "invalid_api_key")
        assert server.key not in err["message"]

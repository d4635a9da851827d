"""Prefix reuse never changes an answer: at temperature 0 every prompt gets the same text
with the cache as without it, whatever the shared prefix (part of a chat template, a
whole earlier turn, a prefix ending inside a UTF-8 character), and wherever the prefix
came from (the slot, another slot, the host store)."""

from __future__ import annotations

import pytest

from autoglm.engine.llamacpp.prefix import MIN_TOKENS, common_prefix
from tests.engine_prefix.support import SYSTEM, Engine, chat, wait_all

pytestmark = pytest.mark.model

STORY = ("Once upon a time in a small harbour town there lived an old clockmaker who "
         "repaired the tower clock every spring. One morning he found a letter under his "
         "door, written in a hand he had not seen for forty years, and it said: ")


@pytest.fixture(scope="module")
def engines():
    cached = Engine(slots=2, store_mib=64)
    plain = Engine(slots=1, prefix=False)
    yield cached, plain
    cached.close()
    plain.close()


def _pairs(e: Engine) -> list[tuple[str, list[int], list[int]]]:
    t = e.tokens
    q1 = chat(SYSTEM, "How much does express shipping cost?")
    q2 = chat(SYSTEM, "Can I return an opened box of tea?")
    return [
        # the shared prefix ends inside the template, right after "<|im_start|>user\n"
        ("same system, other question", t(q1), t(q2)),
        # the shared prefix ends right after "<|im_start|>system\n"
        ("other system, same question", t(chat("You are a pirate.", "Hello!")),
         t(chat("You are a poet.", "Hello!"))),
        ("longer completion", t(text=STORY), t(text=STORY + "\"Come back to the tower.\"")),
        ("identical prompt", t(text=STORY + "meet me"), t(text=STORY + "meet me")),
        ("inside a 4-byte character", t(text=STORY + "the sign \U0001d11e marks it."),
         t(text=STORY + "the sign \U0001d122 marks it.")),
        ("inside a 3-byte character", t(text=STORY + "look for \ua66e twice"),
         t(text=STORY + "look for \ua66d twice")),
        ("short shared prefix", t(text="The capital of France is"),
         t(text="The capital of Italy is")),
        ("mid-word", t(text=STORY + "unbelievable"), t(text=STORY + "unbeaten")),
    ]


def test_answers_are_identical_with_and_without_the_cache(engines) -> None:
    cached, plain = engines
    pairs = _pairs(cached)
    reused = []
    for name, first, second in pairs:
        n = common_prefix(first, second)
        assert 0 < n < len(second) or first == second, name
        for prompt in (first, second):
            got = cached.run(prompt, max_tokens=8)
            want = plain.run(prompt, max_tokens=8)
            assert want.cached == 0
            assert got.text == want.text, (name, got.cached)
            assert got.completion_tokens == want.completion_tokens
            assert got.prompt_tokens == len(prompt)
        reused.append((name, got.cached, min(n, len(second) - 2)))
    # the second prompt of every pair reused at least the prefix it shares with the first
    for name, got, shared in reused:
        assert got >= shared, (name, got, shared)
    # the multi-byte cases really split a character inside the shared prefix
    e = cached
    for name, first, second in pairs:
        if "character" in name:
            n = common_prefix(first, second)
            head = b"".join(e.model.piece(tok) for tok in first[:n])
            with pytest.raises(UnicodeDecodeError):
                head.decode("utf-8")


def test_a_conversation_reuses_its_previous_turn(engines) -> None:
    cached, plain = engines
    turns = ["Do you sell coffee?", "Which countries is it from?", "Is shipping free?"]
    answers: list[str] = []
    for i in range(len(turns)):
        prompt = cached.tokens(chat(SYSTEM, *turns[: i + 1], answers=tuple(answers)))
        got = cached.run(prompt, max_tokens=10)
        want = plain.run(prompt, max_tokens=10)
        assert got.text == want.text
        if i > 0:  # the whole previous prompt (its answer is prefilled again)
            previous = cached.tokens(chat(SYSTEM, *turns[:i], answers=tuple(answers[:-1])))
            assert got.cached >= len(previous) - 2
        answers.append(got.text)


def test_reusing_answers_skips_the_previous_answer_too() -> None:
    engine = Engine(slots=1, reuse_answers=True)
    try:
        first = engine.tokens(chat(SYSTEM, "Do you sell coffee?"))
        answer = engine.run(first, max_tokens=10).text
        second = engine.tokens(chat(SYSTEM, "Do you sell coffee?", "From where?",
                                    answers=(answer,)))
        got = engine.run(second, max_tokens=2)
        assert got.cached > len(first) + 3  # the answer's tokens as well
    finally:
        engine.close()


def test_copy_from_a_busy_slot_and_restore_from_the_store(engines) -> None:
    cached, plain = engines
    base = cached.stats()["hits"]
    long_q = cached.tokens(chat(SYSTEM, "Write a long poem about cheese."))
    other = cached.tokens(chat(SYSTEM, "What is the capital of Peru?"))
    # slot A generates; the second request shares the system prompt: copied from A
    first, _ = cached.submit(long_q, max_tokens=48)
    while not first.token_times:
        first.done.wait(0.01)
    second = cached.run(other, max_tokens=8)
    wait_all([first])
    assert cached.stats()["hits"]["copy"] == base["copy"] + 1
    assert second.cached >= common_prefix(long_q, other) >= MIN_TOKENS
    assert second.text == plain.run(other, max_tokens=8).text
    # both slots go to other prompts (their content is saved), then the poem resumes
    resumed = cached.tokens(chat(SYSTEM, "Write a long poem about cheese.", "Shorter, please.",
                                 answers=(first.text,)))
    for text in ("Tell me about the moon landing in 1969, " * 3, "List five birds. " * 6):
        cached.run(cached.tokens(text=text), max_tokens=4, tenant="other")
    got = cached.run(resumed, max_tokens=8)
    stats = cached.stats()
    assert stats["hits"]["store"] == base["store"] + 1
    assert got.cached >= len(long_q) - 2  # the whole earlier prompt
    assert got.text == plain.run(resumed, max_tokens=8).text


def test_another_model_digest_is_a_miss() -> None:
    one = Engine(slots=1, digest="model-one", store_mib=64)
    try:
        prompt = one.tokens(text=STORY + "the well")
        one.run(prompt, max_tokens=2)
        one.run(one.tokens(text="Something else entirely, " * 12), max_tokens=2)  # saves it
        assert one.stats()["store_entries"] == 1
        hit = one.run(prompt, max_tokens=2)
        assert hit.cached == len(prompt) - 2
        one.run(one.tokens(text="Something else entirely, " * 12), max_tokens=2)
        one.cache.digest = "model-two"  # the same store, another model's weights
        miss = one.run(prompt, max_tokens=2)
        assert miss.cached == 0
    finally:
        one.close()

"""The official `AsyncOpenAI` client: plain and streamed chat, including non-ASCII text."""

from __future__ import annotations

import asyncio

import pytest

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e

TEST_TIMEOUT_S = 60.0


async def _stream(client, messages, max_tokens: int) -> tuple[list, object]:
    """All chunks of a streamed chat completion with usage; returns (chunks, usage)."""
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    return chunks, chunks[-1].usage if chunks else None


def _content(chunks) -> list[str]:
    return [c.choices[0].delta.content for c in chunks
            if c.choices and c.choices[0].delta.content]


async def test_async_chat_completion(server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "What is the largest planet?"}]
    async with server.async_openai() as client:
        r = await asyncio.wait_for(
            client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                           max_tokens=16),
            TEST_TIMEOUT_S,
        )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_async_stream_with_usage_matches_non_streamed(server: ServerProcess) -> None:
    messages = [{"role": "user", "content": "Tell me a fact about the moon."}]
    max_tokens = 32
    async with server.async_openai() as client:
        whole = await asyncio.wait_for(
            client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                           max_tokens=max_tokens),
            TEST_TIMEOUT_S,
        )
        chunks, usage = await asyncio.wait_for(_stream(client, messages, max_tokens),
                                               TEST_TIMEOUT_S)
    assert chunks, "the stream was empty"
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    # The first chunk names the role; only the usage chunk (last) has no choices.
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])
    finishes = [c.choices[0].finish_reason for c in chunks[:-1]]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])

    content = _content(chunks)
    assert len(content) >= 2, "a streamed answer should arrive in several chunks"
    assert "".join(content) == whole.choices[0].message.content
    assert usage is not None
    assert usage.completion_tokens >= 1
    # Each content chunk carries at least one token (a token can hold back a partial
    # character, so there may be fewer chunks than tokens, never more).
    assert len(content) <= usage.completion_tokens <= max_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_stream_chinese_and_emoji_chunks_are_whole_characters(
    server: ServerProcess,
) -> None:
    messages = [{"role": "user",
                 "content": "Write a short greeting in Chinese with emoji"}]
    max_tokens = 40
    async with server.async_openai() as client:
        chunks, usage = await asyncio.wait_for(_stream(client, messages, max_tokens),
                                               TEST_TIMEOUT_S)
        whole = await asyncio.wait_for(
            client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                           max_tokens=max_tokens),
            TEST_TIMEOUT_S,
        )
    content = _content(chunks)
    assert content
    for piece in content:
        assert isinstance(piece, str)
        assert "\ufffd" not in piece, f"replacement character in chunk {piece!r}"
        piece.encode("utf-8")  # no lone surrogates: every chunk is whole characters
    text = "".join(content)
    non_ascii = [ch for ch in text if ord(ch) > 0x7F]
    assert non_ascii, f"the answer has no Chinese or emoji, the test proves nothing: {text!r}"
    assert any(ord(ch) >= 0x1F000 or 0x4E00 <= ord(ch) <= 0x9FFF for ch in non_ascii), text
    # Some characters took several tokens, so some tokens produced no chunk: the
    # partial bytes were held back rather than sent as broken text.
    assert usage is not None and len(content) < usage.completion_tokens
    assert text == whole.choices[0].message.content
    assert "\ufffd" not in whole.choices[0].message.content

"""Training examples: a JSONL file of chats in OpenAI's fine-tuning format.

One JSON object a line, ``{"messages": [{"role": "system"|"user"|"assistant", "content":
"..."}, ...]}``; an assistant message may carry ``"weight": 0`` (not learned from) or
``1``. Each line is checked as it is read and the first fault is reported with its line
number. ``encode`` renders a chat with the base model's own chat template, piece by
piece, so that the loss falls only on what the assistant wrote (its text and the
template's end-of-turn token) and the prompt tokens are the ones the engine builds.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of a token the loss does not count (torch's cross-entropy default)


@dataclass(frozen=True)
class Example:
    line: int
    messages: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is not learned

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise ConfigError(f"{where}: 'content' must be a string (or a list of text parts)")


def _message(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: not an object")
    role = raw.get("role")
    if role not in ROLES:
        raise ConfigError(f"{where}: role {role!r} is not supported; use one of "
                          f"{', '.join(ROLES)}")
    if raw.get("tool_calls") or raw.get("function_call"):
        raise ConfigError(f"{where}: tool calls are not supported by fine-tuning yet")
    message: dict[str, Any] = {"role": role, "content": _content(raw.get("content"), where)}
    if "weight" in raw:
        if role != "assistant" or raw["weight"] not in (0, 1) or isinstance(raw["weight"], bool):
            raise ConfigError(f"{where}: 'weight' must be 0 or 1, on assistant messages only")
        message["weight"] = raw["weight"]
    return message


def parse_line(text: str, number: int, name: str) -> Example:
    where = f"{name} line {number}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object with 'messages'")
    if obj.get("tools") or obj.get("functions"):
        raise ConfigError(f"{where}: tool definitions are not supported by fine-tuning yet")
    raw = obj.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'messages' must be a non-empty list")
    messages = tuple(_message(m, f"{where}, message {i + 1}") for i, m in enumerate(raw))
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        raise ConfigError(f"{where}: no assistant message to learn from")
    return Example(number, messages)


def load_examples(path: Path) -> list[Example]:
    """Every example of the file, in order; ConfigError naming the first bad line."""
    if not path.is_file():
        raise ConfigError(f"training data not found: {path}")
    examples = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{path.name} line {number}: not UTF-8 text") from None
            if text.strip():
                examples.append(parse_line(text, number, path.name))
    if not examples:
        raise ConfigError(f"{path} holds no examples (an empty file); write one JSON chat "
                          "a line: {\"messages\": [{\"role\": \"user\", ...}, "
                          "{\"role\": \"assistant\", ...}]}")
    return examples


def split(examples: list[Example], val_fraction: float,
          seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): a seeded shuffle, then the last ``val_fraction`` held out
    (at least one example once there are two or more; none below that)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError("the validation fraction must be at least 0 and below 1")
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(order) - 1)
    return order[:len(order) - n_val], order[len(order) - n_val:]


class ChatEncoder:
    """Chats to token ids and labels with a tokenizer's chat template."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the base model has no chat template; fine-tuning on chats "
                              "needs one")
        self.tok = tokenizer
        self.max_len = max_len
        self.controls = [t for t in tokenizer.all_special_tokens if t]
        self.controls += [t.content for t in tokenizer.added_tokens_decoder.values()
                          if getattr(t, "special", False) and t.content not in self.controls]

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self.tok.apply_chat_template(plain, tokenize=False,
                                            add_generation_prompt=generation_prompt)

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode(self, example: Example) -> Encoded:
        """The chat as (input ids, labels), cut at ``max_len`` tokens."""
        for m in example.messages:
            bad = next((c for c in self.controls if c in m["content"]), None)
            if bad is not None:
                raise ConfigError(f"line {example.line}: a message holds the control token "
                                  f"{bad!r}, which the chat template adds itself")
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        msgs = list(example.messages)
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                prompt = self._render(msgs[:i], True)
                full = self._render(msgs[:i + 1], False)
                learn = bool(m.get("weight", 1))
            else:
                prompt = full = self._render(msgs[:i + 1], False)
                learn = False
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise ConfigError("the base model's chat template does not render a chat turn "
                                  "by turn; fine-tuning cannot tell the answers apart")
            head = self._ids(prompt[len(done):]) if len(prompt) > len(done) else []
            tail = self._ids(full[len(prompt):]) if len(full) > len(prompt) else []
            ids += head + tail
            labels += [IGNORE] * len(head) + (tail if learn else [IGNORE] * len(tail))
            done = full
        return Encoded(ids[:self.max_len], labels[:self.max_len])

    def encode_all(self, examples: list[Example]) -> list[Encoded]:
        out = [self.encode(e) for e in examples]
        if not any(e.trained_tokens for e in out):
            raise ConfigError(f"no answer token falls within {self.max_len} tokens; raise "
                              "--max-len or shorten the prompts")
        return out

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The tokens of a prompt that asks for the next assistant turn."""
        return self._ids(self._render(messages, True))

"""Chat messages to prompt tokens, with the chat template from the GGUF metadata."""

from __future__ import annotations

import re
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from autoglm.engine.llamacpp.model import LlamaModel
from autoglm.errors import ConfigError, ContextLengthError, InvalidRequestError
from autoglm.structured.tools import ToolSet, fallback_messages

# Used only when a GGUF carries no chat template of its own.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Stands in for a message's content while the template is rendered; private-use
# characters, and never in the rendered text otherwise (contents are not in it).
_PLACEHOLDER = "\ue000{}\ue001"
_SPLIT = re.compile("\ue000(\\d+)\ue001")


def _raise(message: str) -> None:
    raise InvalidRequestError(f"chat template refused the messages: {message}", param="messages")


class PromptBuilder:
    def __init__(self, model: LlamaModel, template: str | None = None) -> None:
        """``template``: a chat template to use instead of the model's own."""
        self.model = model
        source = template or model.chat_template or CHATML
        # A template that reads ``tools`` shows them itself; others get the fallback.
        self.native_tools = re.search(r"\btools\b", source) is not None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"the model's chat template does not compile: {exc}") from exc
        self._bos = model.bos_text
        self._eos = model.eos_text

    def _render(self, messages: list[dict[str, Any]],
                tools: list[dict[str, Any]] | None = None) -> str:
        try:
            return self._template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except InvalidRequestError:
            raise
        except TemplateError as exc:
            raise InvalidRequestError(
                f"chat template could not render the messages: {exc}", param="messages"
            ) from exc

    def chat(self, messages: list[dict[str, Any]], tools: ToolSet | None = None) -> list[int]:
        """Prompt tokens. The template's own text may hold control tokens (<|im_start|>...);
        what callers wrote never becomes one: the template is rendered around placeholders,
        its text is tokenized with special tokens parsed, each message's content without.
        (The template writes BOS itself when the model wants one.) ``tools``: shown through
        the template's tools section, or else by the fallback of ``structured.tools``."""
        wire_tools = None
        if self.native_tools:
            wire_tools = tools.wire() if tools is not None and tools.active else None
        elif tools is not None or any(m.get("role") == "tool" or m.get("tool_calls")
                                      for m in messages):
            messages = fallback_messages(messages, tools)
        contents = [m.get("content") for m in messages]
        held = [i for i, c in enumerate(contents) if isinstance(c, str) and c]
        text = self._render([{**m, "content": _PLACEHOLDER.format(i)} if i in held else m
                             for i, m in enumerate(messages)], wire_tools)
        parts = _SPLIT.split(text)
        found = [int(p) for p in parts[1::2]]
        tokenize = self.model.tokenize
        if sorted(found) != held:  # the template did more than place each content once
            return self._checked_whole(messages, contents, wire_tools)
        tokens: list[int] = []
        for j, part in enumerate(parts):
            if j % 2 == 0:
                if part:
                    tokens += tokenize(part, add_special=False, parse_special=True)
            else:
                tokens += tokenize(contents[int(part)], add_special=False, parse_special=False)
        return tokens

    def _checked_whole(self, messages: list[dict[str, Any]], contents: list[Any],
                       tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Fallback for templates that transform contents: tokenize the whole text, but only
        when no content holds control-token text."""
        tokenize = self.model.tokenize
        for c in contents:
            if isinstance(c, str) and c and tokenize(c, add_special=False, parse_special=True) \
                    != tokenize(c, add_special=False, parse_special=False):
                raise InvalidRequestError(
                    "a message holds text of this model's control tokens, which its chat "
                    "template cannot keep apart from its own", param="messages")
        return tokenize(self._render(messages, tools), add_special=False, parse_special=True)

    def completion(self, prompt: str) -> list[int]:
        return self.model.tokenize(prompt, add_special=True, parse_special=False)


def check_length(prompt_tokens: int, max_tokens: int | None, ctx: int, default_max: int,
                 param: str = "messages") -> int:
    """Validate lengths against the slot context; return the answer budget in tokens.
    ``param``: where the prompt came from (``messages``, or ``prompt`` for completions)."""
    if prompt_tokens >= ctx:
        raise ContextLengthError(
            f"This model's maximum context length is {ctx} tokens, however your prompt is "
            f"{prompt_tokens} tokens. Shorten the prompt.",
            param=param,
        )
    room = ctx - prompt_tokens
    if max_tokens is None:
        return min(default_max, room)
    if max_tokens > room:
        raise ContextLengthError(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} "
            "for the completion). Reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    return max_tokens

"""Chat messages to prompt tokens, with the chat template from the GGUF metadata."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from autoglm.engine.llamacpp.model import LlamaModel
from autoglm.errors import ConfigError, ContextLengthError, InvalidRequestError

# Used only when a GGUF carries no chat template of its own.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise InvalidRequestError(f"chat template refused the messages: {message}", param="messages")


class PromptBuilder:
    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        source = model.chat_template or CHATML
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"the model's chat template does not compile: {exc}") from exc
        self._bos = model.bos_text
        self._eos = model.eos_text

    def chat(self, messages: list[dict[str, Any]]) -> list[int]:
        try:
            text = self._template.render(
                messages=messages,
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
        # The template writes BOS itself when the model wants one. Special tokens are
        # parsed in the rendered text, as llama.cpp's own server does.
        return self.model.tokenize(text, add_special=False, parse_special=True)

    def completion(self, prompt: str) -> list[int]:
        return self.model.tokenize(prompt, add_special=True, parse_special=False)


def check_length(prompt_tokens: int, max_tokens: int | None, ctx: int, default_max: int) -> int:
    """Validate lengths against the slot context; return the answer budget in tokens."""
    if prompt_tokens >= ctx:
        raise ContextLengthError(
            f"This model's maximum context length is {ctx} tokens, however your prompt is "
            f"{prompt_tokens} tokens. Shorten the prompt.",
            param="messages",
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

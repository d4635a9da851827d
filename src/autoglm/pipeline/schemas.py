"""Request bodies of the OpenAI-compatible endpoints.

Unknown fields are ignored, as OpenAI does; wrong types are a 400 naming the field
(strict: "5" is not a number); values we cannot honour are a 400 naming the parameter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autoglm.errors import InvalidRequestError, UnsupportedParameterError

_STRICT = ConfigDict(extra="ignore", strict=True)


class ContentPart(BaseModel):
    model_config = _STRICT
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = _STRICT
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise UnsupportedParameterError(
                    f"content part type '{part.type}' is not supported by this model; "
                    "only 'text' parts are",
                    param="messages",
                )
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(BaseModel):
    model_config = _STRICT
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self, json_object: bool) -> dict[str, Any]:
        return {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "json_object": json_object,
        }

    def check_common(self) -> None:
        if self.n is not None and self.n > 1:
            raise UnsupportedParameterError(
                "n > 1 is not supported: ask for one choice per request", param="n"
            )


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check(self) -> None:
        self.check_common()
        if self.functions or self.function_call not in (None, "none"):
            name = "functions" if self.functions else "function_call"
            raise UnsupportedParameterError(
                f"'{name}' (the deprecated form) is not supported: use 'tools' and "
                "'tool_choice'", param=name)
        if self.logprobs or self.top_logprobs:
            raise UnsupportedParameterError("'logprobs' is not supported", param="logprobs")
        rf = self.response_format
        if rf is not None and rf.type == "json_schema" and (
                rf.json_schema is None or rf.json_schema.schema_ is None):
            raise InvalidRequestError(
                "response_format 'json_schema' needs 'json_schema': {'name': ..., 'schema': "
                "{...}}", param="response_format.json_schema")
        for i, m in enumerate(self.messages):
            if m.role == "tool" and not m.tool_call_id:
                raise InvalidRequestError("a message of role 'tool' needs 'tool_call_id'",
                                          param=f"messages.{i}.tool_call_id")
            if m.tool_calls and m.role != "assistant":
                raise InvalidRequestError("only assistant messages carry 'tool_calls'",
                                          param=f"messages.{i}.tool_calls")

    @property
    def json_object(self) -> bool:
        return self.response_format is not None and self.response_format.type == "json_object"

    def wire_messages(self) -> list[dict[str, Any]]:
        out = []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            msg: dict[str, Any] = {"role": role, "content": m.text()}
            if m.tool_calls:
                msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            if m.name is not None and role == "tool":
                msg["name"] = m.name
            out.append(msg)
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def check(self) -> None:
        self.check_common()
        if self.echo:
            raise UnsupportedParameterError("'echo' is not supported", param="echo")
        if self.suffix:
            raise UnsupportedParameterError("'suffix' is not supported", param="suffix")
        if self.best_of is not None and self.best_of > 1:
            raise UnsupportedParameterError("best_of > 1 is not supported", param="best_of")
        if self.logprobs:
            raise UnsupportedParameterError("'logprobs' is not supported", param="logprobs")

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise UnsupportedParameterError(
                "a list prompt must hold exactly one string (batched prompts are not supported)",
                param="prompt",
            )
        return self.prompt[0]


def parse(model: type[BaseModel], data: Any) -> Any:
    """Validate ``data`` into ``model``; the first problem becomes a 400 naming its field."""
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "missing":
            msg = f"'{loc}' is a required property"
        else:
            msg = f"Invalid value for '{loc}': {err['msg']}"
        raise InvalidRequestError(msg, param=loc or None) from None

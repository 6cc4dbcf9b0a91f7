"""What a request may ask, checked before anything runs: the OpenAI request bodies (pydantic
models with bounds), the fields this server refuses rather than ignore, and the error every
check raises (``APIError``, answered in OpenAI's error shape).

Not here: serving them (``completions.py``), the HTTP layer (``app.py``, ``middleware.py``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scratchlm.generation.controls import MAX_TOP_LOGPROBS


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(status: int, message: str, param: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    code = "request_too_large" if status == 413 else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status)


def _valid_text(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone UTF-16 surrogate)") from None
    return value


MAX_STOP_CHARS = 1000  # one stop sequence; 4 of them are checked after every token
MAX_N = 8  # choices per request (each is a row of the batch)
MAX_TOOLS = 128  # OpenAI's limit: each tool's schema joins the prompt and the grammar
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows

# OpenAI fields this server does not implement: refused (400, naming the field) unless the
# request leaves them at a value that asks for nothing, so none is accepted and ignored.
NOT_IMPLEMENTED = {"echo": (None, False), "best_of": (None, 1), "suffix": (None, "")}


class Sampling(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400, not ignored

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # None: the model's default (generation_config.json / GGUF, else greedy), as chat and generate
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    seed: int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)  # choices (None: 1); one prefill
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None  # token id (as text) -> -100..100

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence is longer than {MAX_STOP_CHARS} characters")
        return [_valid_text(s, "a stop sequence") for s in stops]

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        if not v:
            return None
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        out = {}
        for key, value in v.items():
            if not key.isdigit() or len(key) > 9:
                raise ValueError(f"keys are token ids, got {key[:20]!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"a bias is between -100 and 100, got {value}")
            out[int(key)] = float(value)
        return out


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


Sampling.model_rebuild()


class FunctionCall(BaseModel):
    name: str = Field(max_length=64)
    arguments: str  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=256)

    @field_validator("content")
    @classmethod
    def _unicode(cls, v):
        if isinstance(v, list):  # content parts: text only (no images, audio or files here)
            v = "".join(p.text for p in v)
        return None if v is None else _valid_text(v, "the content")

    def template_dict(self) -> dict:
        """The message as chat templates read it (Hugging Face's convention: a tool call's
        arguments as an object, ``developer`` as ``system``)."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                               "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


def _arguments(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return text  # as given: the template shows it as text
    return value


class Function(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None  # a JSON schema of an object
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: Function


class NamedFunction(BaseModel):
    name: str


class NamedTool(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema")
        return self


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedTool | None = None
    # true: a reply may hold several calls; false: the first only; None: several when the
    # reply is free (tool_choice auto), one when it is constrained (required / a function)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, v):
        if v and len(v) > MAX_TOOLS:
            raise ValueError(f"{len(v)} tools; this server takes at most {MAX_TOOLS}")
        names = [t.function.name for t in v or []]
        if len(set(names)) != len(names):
            raise ValueError("two tools have the same name")
        return v or None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)  # the legacy API's top-k count
    echo: Any = None
    best_of: Any = None
    suffix: Any = None

    @field_validator(*NOT_IMPLEMENTED)
    @classmethod
    def _not_implemented(cls, v, info):
        if any(v == ok and isinstance(v, bool) == isinstance(ok, bool)
               for ok in NOT_IMPLEMENTED[info.field_name]):
            return v
        raise ValueError(f"{info.field_name} is not supported by this server yet; leave it out")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty")
        return _valid_text(v, "the prompt")

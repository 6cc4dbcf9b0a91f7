"""What a request may ask, checked before anything runs: the OpenAI request bodies (pydantic
models with bounds), the fields this server refuses rather than ignore, and the error every
check raises (``APIError``, answered in OpenAI's error shape).

Not here: serving them (``completions.py``), the HTTP layer (``app.py``, ``middleware.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator


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

# OpenAI fields this server does not implement: refused (400, naming the field) unless the
# request leaves them at a value that asks for nothing, so none is accepted and ignored.
NOT_IMPLEMENTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0),
                   "logit_bias": (None, {}), "presence_penalty": (None, 0),
                   "frequency_penalty": (None, 0), "tools": (None, []),
                   "tool_choice": (None, "none"), "response_format": (None, {"type": "text"}),
                   "echo": (None, False), "best_of": (None, 1), "suffix": (None, "")}


class Sampling(BaseModel):
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
    stream_options: dict | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None
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

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence is longer than {MAX_STOP_CHARS} characters")
        return [_valid_text(s, "a stop sequence") for s in stops]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _unicode(cls, v):
        return _valid_text(v, "the content")


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]

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



"""An OpenAI-compatible HTTP server (FastAPI on uvicorn) for one model, and its web chat page.

    GET  /health                 liveness and the model name
    GET  /v1/models              the one model served
    POST /v1/completions         text completion      (stream: server-sent events)
    POST /v1/chat/completions    chat with the model's template (stream: server-sent events)
    GET  /                       the chat page (static/chat.html)

Requests from concurrent clients are decoded together by ``generation.batcher.Batcher``.
Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status; with an API key set, every /v1 route needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchlm.api import LLM
from scratchlm.generation.batcher import Batcher
from scratchlm.generation.engine import SamplingParams, TextStream
from scratchlm.recipes.configs import ServeConfig  # noqa: F401 (its config)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": None}}, status_code=status)


class Sampling(BaseModel):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


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
        return v


def create_app(llm: LLM, cfg: ServeConfig) -> FastAPI:
    batcher = Batcher(llm.engine, max_batch=cfg.max_batch)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="scratchlm", version="0.1.0", lifespan=lifespan)
    app.state.batcher, app.state.llm = batcher, llm
    model_id = llm.name

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _error(exc.status, exc.message, exc.param, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error(400, f"{param}: {first['msg']}" if param else first["msg"], param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), kind="not_found_error"
                      if exc.status_code == 404 else "invalid_request_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if cfg.api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                return _error(401, "invalid or missing API key (Authorization: Bearer ...)",
                              kind="authentication_error")
        return await call_next(request)

    def sampling(req: Sampling, prompt_len: int) -> SamplingParams:
        if req.model not in (None, model_id):
            raise APIError(404, f"model {req.model!r} is not served here (serving {model_id!r})",
                           "model", "not_found_error")
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:
            max_tokens = min(cfg.max_tokens_cap, llm.context_length - prompt_len)
        if max_tokens > cfg.max_tokens_cap:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's cap of "
                                f"{cfg.max_tokens_cap}", "max_tokens")
        if prompt_len + max_tokens > llm.context_length:
            raise APIError(400, f"the prompt has {prompt_len} tokens; with max_tokens "
                                f"{max_tokens} that exceeds the context length of "
                                f"{llm.context_length}", "max_tokens")
        return SamplingParams(max_tokens, req.temperature, req.top_k,
                              req.top_p if req.top_p < 1.0 else None, llm.stop_ids, req.seed)

    async def run(prompt_ids: list[int], params: SamplingParams, stops: list[str]):
        """Async iterator of (text piece, finish_reason) for one request through the batcher."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = batcher.submit(prompt_ids, params,
                             lambda tok, reason: loop.call_soon_threadsafe(q.put_nowait, (tok, reason)))
        text = TextStream(llm.tokenizer, stops)
        try:
            while True:
                tok, reason = await q.get()
                if reason is not None:
                    if reason.startswith("error"):
                        raise APIError(500, reason, kind="server_error")
                    tail = text.finish()
                    yield tail, reason, req.generated
                    return
                piece = text.push(tok)
                if text.stopped:
                    req.cancel()
                    yield piece, "stop", req.generated
                    return
                if piece:
                    yield piece, None, req.generated
        finally:
            req.cancel()  # the client left: free its row

    def usage(prompt_len: int, completion: int) -> dict:
        return {"prompt_tokens": prompt_len, "completion_tokens": completion,
                "total_tokens": prompt_len + completion}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def respond(kind: str, req: Sampling, prompt_ids: list[int], stops: list[str]):
        params = sampling(req, len(prompt_ids))
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def choice(piece: str | None, reason: str | None, stream: bool) -> dict:
            if kind == "chat":
                body = {"delta": {"content": piece} if piece is not None else {}} if stream else \
                    {"message": {"role": "assistant", "content": piece}}
                return {"index": 0, **body, "finish_reason": reason, "logprobs": None}
            return {"index": 0, "text": piece or "", "finish_reason": reason, "logprobs": None}

        if not req.stream:
            pieces, reason, n = [], "stop", 0
            async for piece, reason, n in run(prompt_ids, params, stops):
                pieces.append(piece)
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": model_id,
                                 "choices": [choice("".join(pieces), reason, False)],
                                 "usage": usage(len(prompt_ids), n)})

        async def events():
            head = {"id": rid, "object": obj + ".chunk" if kind == "chat" else obj,
                    "created": created, "model": model_id}
            if kind == "chat":
                yield sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                      "content": ""},
                                                "finish_reason": None}]})
            n = 0
            try:
                async for piece, reason, n in run(prompt_ids, params, stops):
                    if piece:
                        yield sse({**head, "choices": [choice(piece, None, True)]})
                    if reason is not None:
                        yield sse({**head, "choices": [choice(None if kind == "chat" else "",
                                                              reason, True)]})
            except APIError as e:
                yield sse({"error": {"message": e.message, "type": e.kind}})
            if (req.stream_options or {}).get("include_usage"):
                yield sse({**head, "choices": [], "usage": usage(len(prompt_ids), n)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "batches": len(batcher.batches),
                "largest_batch": max(batcher.batches, default=0)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                            "owned_by": "scratchlm"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        return await respond("text", req, llm.encode(req.prompt), req.stop)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        try:
            ids = llm.chat_ids([m.model_dump() for m in req.messages])
        except ValueError as e:  # no template, or the template refused the conversation
            raise APIError(400, str(e), "messages") from None
        return await respond("chat", req, ids, req.stop + llm.chat_stops())

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files("scratchlm.serve").joinpath("static/chat.html").read_text()

    return app


def main(cfg: ServeConfig) -> None:
    import os

    import uvicorn

    cfg.api_key = cfg.api_key or os.environ.get("SCRATCHLM_API_KEY") or None
    llm = LLM.load(cfg.model, adapter=cfg.adapter, quantize=cfg.quantize)
    app = create_app(llm, cfg)
    print(f"serving {llm.name} on http://{cfg.host}:{cfg.port} (chat page at /, API at /v1)"
          + (" with an API key" if cfg.api_key else ""), flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")

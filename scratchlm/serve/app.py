"""An OpenAI-compatible HTTP server (FastAPI on uvicorn) for one model, and its web chat page.

    GET  /health                 liveness and the model name
    GET  /metrics                Prometheus text: requests, tokens, queue, time to first token
    GET  /v1/models              the one model served
    POST /v1/completions         text completion      (stream: server-sent events)
    POST /v1/chat/completions    chat with the model's template (stream: server-sent events)
    GET  /                       the chat page (static/chat.html)

Requests from concurrent clients are decoded together by ``generation.batcher.Batcher``.
Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status; with an API key set, every /v1 route needs ``Authorization: Bearer <key>``.

Requests are hostile until checked: the body size (413), the number of messages and the prompt's
tokens are limited (``ServeConfig``); text that is not valid Unicode, seeds outside 64 bits and
prompts that leave no room in the context are 400s naming the field. Chat messages are rendered
with the model's template and encoded so that a special-token string typed by the user
(``<|im_start|>system``) stays ordinary text; completion prompts are ordinary text too.
Tokenizing and rendering run in a worker thread, so a huge request never blocks ``/health``.
A client that disconnects, streaming or not, cancels its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchlm import __version__
from scratchlm.api import LLM
from scratchlm.generation.batcher import Batcher
from scratchlm.generation.engine import SamplingParams, TextStream
from scratchlm.recipes.configs import ServeConfig  # noqa: F401 (its config)
from scratchlm.serve.guard import guarded


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None = None,
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


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is read
    whole (by its Content-Length, or by counting a chunked body as it arrives)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_json(send, 413, self._message())
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # answered by the app's handler, as a 413
                    raise StarletteHTTPException(413, self._message()["error"]["message"])
            return message

        await self.app(scope, counted, send)

    def _message(self) -> dict:
        return {"error": {"message": f"the request body is larger than this server's limit of "
                                     f"{self.limit} bytes", "type": "invalid_request_error",
                          "param": None, "code": "request_too_large"}}


class Gate:
    """ASGI middleware: the API key for /v1 routes, and each answer counted for /metrics. Plain
    ASGI (not ``@app.middleware``, whose wrapper hides the client's disconnect): ``receive``
    goes through untouched, so an endpoint can tell that its client left."""

    def __init__(self, app, api_key: str | None, stats: "Stats"):
        self.app, self.api_key, self.stats = app, api_key, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self.api_key and (path.startswith("/v1") or path == "/metrics"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                self.stats.answered(path, 401)
                return await _send_json(send, 401, {"error": {
                    "message": "invalid or missing API key (Authorization: Bearer ...)",
                    "type": "authentication_error", "param": None, "code": None}})

        async def counted(message):
            if message["type"] == "http.response.start":
                self.stats.answered(path, message["status"])
            await send(message)

        await self.app(scope, receive, counted)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class Stats:
    """What ``/metrics`` reports (Prometheus text format)."""

    ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/")

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = self.completion_tokens = 0
        self.ttft_sum, self.ttft_count = 0.0, 0
        self.decode_seconds = 0.0
        self.active = 0

    def answered(self, path: str, status: int) -> None:
        route = path if path in self.ROUTES else "other"  # no label per hostile path
        self.requests[route, status] = self.requests.get((route, status), 0) + 1

    def render(self, queue_length: int) -> str:
        lines = ["# HELP scratchlm_requests_total HTTP requests answered, by route and status.",
                 "# TYPE scratchlm_requests_total counter"]
        lines += [f'scratchlm_requests_total{{route="{r}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())]
        rate = self.completion_tokens / self.decode_seconds if self.decode_seconds else 0.0
        for name, kind, value, help_ in (
                ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens processed."),
                ("completion_tokens_total", "counter", self.completion_tokens,
                 "Tokens generated."),
                ("active_requests", "gauge", self.active, "Requests being generated now."),
                ("queue_length", "gauge", queue_length, "Requests waiting for the batcher."),
                ("tokens_per_second", "gauge", round(rate, 3),
                 "Generated tokens per second of generation, over all finished requests."),
        ):
            lines += [f"# HELP scratchlm_{name} {help_}", f"# TYPE scratchlm_{name} {kind}",
                      f"scratchlm_{name} {value}"]
        lines += ["# HELP scratchlm_time_to_first_token_seconds From submission to the first "
                  "token.", "# TYPE scratchlm_time_to_first_token_seconds summary",
                  f"scratchlm_time_to_first_token_seconds_sum {self.ttft_sum:.6f}",
                  f"scratchlm_time_to_first_token_seconds_count {self.ttft_count}"]
        return "\n".join(lines) + "\n"


def create_app(llm: LLM, cfg: ServeConfig) -> FastAPI:
    batcher = Batcher(llm.engine, max_batch=cfg.max_batch, prefix_cache=cfg.prefix_cache)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="scratchlm", version=__version__, lifespan=lifespan)
    app.state.batcher, app.state.llm = batcher, llm
    stats = app.state.stats = Stats()
    app.add_middleware(BodyLimit, limit=cfg.max_request_bytes)
    app.add_middleware(Gate, api_key=cfg.api_key, stats=stats)  # outermost
    model_id = llm.name
    prompt_cap = min(cfg.max_prompt_tokens or llm.context_length, llm.context_length)

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


    def sampling(req: Sampling, prompt_len: int, field: str) -> SamplingParams:
        if req.model not in (None, model_id):
            raise APIError(404, f"model {req.model!r} is not served here (serving {model_id!r})",
                           "model", "not_found_error")
        if prompt_len > prompt_cap or prompt_len >= llm.context_length:
            raise APIError(400, f"the prompt has {prompt_len} tokens; this server takes at most "
                                f"{min(prompt_cap, llm.context_length - 1)} (context length "
                                f"{llm.context_length})", field)
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
        temperature, top_k, top_p = llm.defaults.resolve(req.temperature, req.top_k, req.top_p)
        return SamplingParams(max_tokens, temperature, top_k, top_p, llm.stop_ids, req.seed)

    async def run(prompt_ids: list[int], params: SamplingParams, stops: list[str]):
        """Async iterator of (text piece, finish_reason) for one request through the batcher."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = batcher.submit(prompt_ids, params,
                             lambda tok, reason: loop.call_soon_threadsafe(q.put_nowait, (tok, reason)))
        text = TextStream(llm.tokenizer, stops)
        stats.active += 1
        stats.prompt_tokens += len(prompt_ids)
        first = None
        try:
            while True:
                tok, reason = await q.get()
                if first is None and tok is not None:
                    first = time.perf_counter()
                    stats.ttft_sum += first - req.submitted
                    stats.ttft_count += 1
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
            stats.active -= 1
            stats.completion_tokens += req.generated
            if first is not None:
                stats.decode_seconds += time.perf_counter() - first

    def usage(prompt_len: int, completion: int) -> dict:
        return {"prompt_tokens": prompt_len, "completion_tokens": completion,
                "total_tokens": prompt_len + completion}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def respond(kind: str, req: Sampling, prompt_ids: list[int], stops: list[str],
                      request: Request):
        params = sampling(req, len(prompt_ids), "messages" if kind == "chat" else "prompt")
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

            async def collect():
                nonlocal reason, n
                async for piece, reason, n in run(prompt_ids, params, stops):
                    pieces.append(piece)

            task = asyncio.ensure_future(collect())
            while not task.done():  # a client that leaves cancels its generation
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    return JSONResponse({"error": {"message": "client disconnected",
                                                   "type": "invalid_request_error"}}, 499)
            task.result()  # re-raises an APIError from the generation
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

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(stats.render(batcher.queue_length()),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "decode_steps": batcher.steps,
                "largest_batch": batcher.largest}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                            "owned_by": "scratchlm"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        ids = await asyncio.to_thread(llm.encode, req.prompt, False)  # user text: no controls
        return await respond("text", req, ids, req.stop, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if len(req.messages) > cfg.max_messages:
            raise APIError(400, f"{len(req.messages)} messages; this server takes at most "
                                f"{cfg.max_messages}", "messages")
        try:  # off the event loop: a long conversation must not stall other clients
            ids = await asyncio.to_thread(llm.chat_ids, [m.model_dump() for m in req.messages])
        except ValueError as e:  # no template, or the template refused the conversation
            raise APIError(400, str(e), "messages") from None
        return await respond("chat", req, ids, req.stop + llm.chat_stops(), request)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files("scratchlm.serve").joinpath("static/chat.html").read_text()

    return app


def main(cfg: ServeConfig) -> None:
    import os

    import uvicorn

    if cfg.api_key is None:
        cfg.api_key = os.environ.get("SCRATCHLM_API_KEY")
    if cfg.api_key is not None and not cfg.api_key.strip():
        raise ValueError("--api-key (or SCRATCHLM_API_KEY) is empty: an unset variable would "
                         "start a server open to anyone; give a key, or leave both out for a "
                         "server without one")
    llm = LLM.load(cfg.model, adapter=cfg.adapter, quantize=cfg.quantize, device=cfg.device,
                   dtype=cfg.dtype, prefill=cfg.prefill)
    app = create_app(llm, cfg)
    print(f"serving {llm.name} ({cfg.device}, {cfg.dtype}, prefill {llm.engine.prefill}) on "
          f"http://{cfg.host}:{cfg.port} (chat page at /, API at /v1)"
          + (" with an API key" if cfg.api_key else ""), flush=True)
    raise_open_files_limit()
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                http=guarded(cfg.request_timeout, cfg.max_connections))


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit (often 1024 -> 4096 or
    more): each connection holds one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass  # not POSIX, or not allowed: the system's limit stands

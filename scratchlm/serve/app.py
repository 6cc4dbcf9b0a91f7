"""An OpenAI-compatible HTTP server (FastAPI on uvicorn) for one model, and its web chat page.

    GET  /health                 liveness and the model name
    GET  /metrics                Prometheus text: requests, tokens, queue, time to first token
    GET  /v1/models              the one model served
    POST /v1/completions         text completion      (stream: server-sent events)
                                 both: n choices, logprobs, penalties, logit_bias, seed
    POST /v1/chat/completions    chat with the model's template (stream: server-sent events),
                                 tools and tool calls, JSON output by schema (grammar-constrained)
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

    schema.py       what a request may ask (pydantic models), APIError
    middleware.py   body limit, API key gate, /metrics counters
    guard.py        slow clients (request timeout, connection limit)
    tools.py        what tools, tool_choice and response_format ask: prompt, grammar, parsing
    completions.py  one request: sampling settings, its n rows in the batcher, the answer
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchlm import __version__
from scratchlm.api import LLM
from scratchlm.generation.batcher import Batcher
from scratchlm.recipes.configs import ServeConfig  # noqa: F401 (its config)
from scratchlm.serve.completions import Completions
from scratchlm.serve.guard import guarded
from scratchlm.serve.middleware import BodyLimit, Gate, Stats
from scratchlm.serve.schema import APIError, ChatRequest, CompletionRequest, error_response
from scratchlm.serve.tools import plan


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
    _error_handlers(app)
    done = Completions(llm, cfg, batcher, stats)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(stats.render(batcher.queue_length()),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": llm.name, "decode_steps": batcher.steps,
                "largest_batch": batcher.largest}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                            "owned_by": "scratchlm"}
                                           for name in done.model_ids]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        ids = await asyncio.to_thread(llm.encode, req.prompt, False)  # user text: no controls
        return await done.respond("text", req, ids, req.stop, request, req.logprobs)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if len(req.messages) > cfg.max_messages:
            raise APIError(400, f"{len(req.messages)} messages; this server takes at most "
                                f"{cfg.max_messages}", "messages")
        wants = plan(req, llm.tokenizer)
        messages = [m.template_dict() for m in req.messages]
        try:  # off the event loop: a long conversation must not stall other clients
            ids = await asyncio.to_thread(llm.chat_ids, messages, wants.tools)
        except ValueError as e:  # no template, or the template refused the conversation
            raise APIError(400, str(e), "messages") from None
        grammar = await asyncio.to_thread(wants.grammar, llm)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        return await done.respond("chat", req, ids, req.stop + llm.chat_stops(), request,
                                  logprobs, grammar, wants)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files("scratchlm.serve").joinpath("static/chat.html").read_text()

    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, the field named where there is one."""

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(400, f"{param}: {first['msg']}" if param else first["msg"], param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), kind="not_found_error"
                              if exc.status_code == 404 else "invalid_request_error")


def main(cfg: ServeConfig) -> None:
    import os

    import uvicorn

    if cfg.api_key is None:
        cfg.api_key = os.environ.get("SCRATCHLM_API_KEY")
    if cfg.api_key is not None and not cfg.api_key.strip():
        raise ValueError("--api-key (or SCRATCHLM_API_KEY) is empty: an unset variable would "
                         "start a server open to anyone; give a key, or leave both out for a "
                         "server without one")
    named = cfg.named_adapters()
    # an adapter that does not fit stops the start (the CLI's one-line error names it)
    llm = LLM.load(cfg.model, adapter=None if named else (cfg.adapter or [None])[0],
                   quantize=cfg.quantize, device=cfg.device, dtype=cfg.dtype,
                   prefill=cfg.prefill, adapters=named)
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

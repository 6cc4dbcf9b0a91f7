"""One completion request, from checked body to answer: its sampling settings within this
server's caps, its tokens through the continuous batcher as text pieces (stop strings held
back), and the answer in OpenAI's shape, whole or as server-sent events. A client that leaves
cancels its generation.

Not here: what a body may hold (``schema.py``), the routes (``app.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from scratchlm.api import LLM
from scratchlm.generation.batcher import Batcher
from scratchlm.generation.engine import SamplingParams, TextStream
from scratchlm.recipes.configs import ServeConfig
from scratchlm.serve.middleware import Stats
from scratchlm.serve.schema import APIError, Sampling


def usage(prompt_len: int, completion: int) -> dict:
    return {"prompt_tokens": prompt_len, "completion_tokens": completion,
            "total_tokens": prompt_len + completion}


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@dataclass
class Answer:
    """The frame of one answer: chat or text completion, its id and creation time."""

    kind: str  # chat | text
    model: str
    rid: str = ""
    created: int = 0

    def __post_init__(self):
        self.rid = f"{'chatcmpl' if self.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    def head(self, stream: bool) -> dict:
        obj = self.object + ".chunk" if stream and self.kind == "chat" else self.object
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def choice(self, piece: str | None, reason: str | None, stream: bool) -> dict:
        if self.kind == "chat":
            body = ({"delta": {"content": piece} if piece is not None else {}} if stream else
                    {"message": {"role": "assistant", "content": piece}})
            return {"index": 0, **body, "finish_reason": reason, "logprobs": None}
        return {"index": 0, "text": piece or "", "finish_reason": reason, "logprobs": None}


class Completions:
    def __init__(self, llm: LLM, cfg: ServeConfig, batcher: Batcher, stats: Stats):
        self.llm, self.cfg, self.batcher, self.stats = llm, cfg, batcher, stats
        self.model_id = llm.name
        self.prompt_cap = min(cfg.max_prompt_tokens or llm.context_length, llm.context_length)

    def sampling(self, req: Sampling, prompt_len: int, field: str) -> SamplingParams:
        llm, cfg = self.llm, self.cfg
        if req.model not in (None, self.model_id):
            raise APIError(404, f"model {req.model!r} is not served here (serving "
                                f"{self.model_id!r})", "model", "not_found_error")
        if prompt_len > self.prompt_cap or prompt_len >= llm.context_length:
            raise APIError(400, f"the prompt has {prompt_len} tokens; this server takes at most "
                                f"{min(self.prompt_cap, llm.context_length - 1)} (context "
                                f"length {llm.context_length})", field)
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

    async def run(self, prompt_ids: list[int], params: SamplingParams, stops: list[str]):
        """Async iterator of (text piece, finish_reason, tokens so far) for one request
        through the batcher."""
        stats = self.stats
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = self.batcher.submit(prompt_ids, params, lambda tok, reason: loop.call_soon_threadsafe(
            q.put_nowait, (tok, reason)))
        text = TextStream(self.llm.tokenizer, stops)
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
                    yield text.finish(), reason, req.generated
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

    async def respond(self, kind: str, req: Sampling, prompt_ids: list[int], stops: list[str],
                      request: Request):
        params = self.sampling(req, len(prompt_ids), "messages" if kind == "chat" else "prompt")
        answer = Answer(kind, self.model_id)
        if req.stream:
            return StreamingResponse(self._events(answer, req, prompt_ids, params, stops),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await self._whole(answer, prompt_ids, params, stops, request)

    async def _whole(self, answer: Answer, prompt_ids, params, stops, request: Request):
        pieces, reason, n = [], "stop", 0

        async def collect():
            nonlocal reason, n
            async for piece, reason, n in self.run(prompt_ids, params, stops):
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
        return JSONResponse({**answer.head(False),
                             "choices": [answer.choice("".join(pieces), reason, False)],
                             "usage": usage(len(prompt_ids), n)})

    async def _events(self, answer: Answer, req: Sampling, prompt_ids, params, stops):
        head = answer.head(True)
        if answer.kind == "chat":
            yield sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "finish_reason": None}]})
        n = 0
        try:
            async for piece, reason, n in self.run(prompt_ids, params, stops):
                if piece:
                    yield sse({**head, "choices": [answer.choice(piece, None, True)]})
                if reason is not None:
                    yield sse({**head, "choices": [answer.choice(
                        None if answer.kind == "chat" else "", reason, True)]})
        except APIError as e:
            yield sse({"error": {"message": e.message, "type": e.kind}})
        if (req.stream_options or {}).get("include_usage"):
            yield sse({**head, "choices": [], "usage": usage(len(prompt_ids), n)})
        yield "data: [DONE]\n\n"

"""One completion request, from checked body to answer: its sampling settings within this
server's caps, its ``n`` choices through the continuous batcher (one row each; the prompt
prefilled once for all) as text pieces (stop strings held back) with their log-probabilities,
read for tool calls when it offered tools, and the answer in OpenAI's shape, whole or as
server-sent events. A client that leaves cancels its generations.

Not here: what a body may hold (``schema.py``), what tools and formats ask (``tools.py``), the
routes (``app.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field, replace

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from scratchlm.api import LLM
from scratchlm.generation.batcher import Batcher
from scratchlm.generation.controls import TokenLogprob
from scratchlm.generation.engine import SamplingParams, TextStream
from scratchlm.recipes.configs import ServeConfig
from scratchlm.serve.middleware import Stats
from scratchlm.serve.schema import APIError, Sampling
from scratchlm.tokenizers.backends import token_bytes
from scratchlm.tokenizers.tool_calls import ParsedCall


def usage(prompt_len: int, completion: int) -> dict:
    return {"prompt_tokens": prompt_len, "completion_tokens": completion,
            "total_tokens": prompt_len + completion}


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@dataclass
class Piece:
    """What one choice's generation gives next: text, a parsed call, their tokens'
    log-probabilities, and at the end the finish reason."""

    text: str = ""
    call: ParsedCall | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    reason: str | None = None


@dataclass
class Answer:
    """The frame of one answer: chat or text completion, its id and creation time, and how
    its pieces are written."""

    kind: str  # chat | text
    model: str
    tokenizer: object
    rid: str = ""
    created: int = 0

    def __post_init__(self):
        self.rid = f"{'chatcmpl' if self.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def head(self, stream: bool) -> dict:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        obj = obj + ".chunk" if stream and self.kind == "chat" else obj
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def token(self, token: int) -> tuple[str, list[int]]:
        raw = token_bytes(self.tokenizer, token)
        return raw.decode("utf-8", "replace"), list(raw)

    def logprobs(self, entries: list[TokenLogprob], offset: int = 0) -> dict:
        """OpenAI's logprobs object: chat's ``content`` list, or the legacy completion lists."""
        if self.kind == "chat":
            content = []
            for e in entries:
                text, raw = self.token(e.token)
                top = [dict(zip(("token", "bytes"), self.token(t)), logprob=v) for t, v in e.top]
                content.append({"token": text, "logprob": e.logprob, "bytes": raw,
                                "top_logprobs": top})
            return {"content": content, "refusal": None}
        tokens, offsets = [], []
        for e in entries:
            offsets.append(offset)
            text = self.token(e.token)[0]
            tokens.append(text)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self.token(t)[0]: v for t, v in e.top} for e in entries],
                "text_offset": offsets}


def call_delta(index: int, call: ParsedCall) -> list[dict]:
    """A call as OpenAI streams it: its id, type and name first, then its arguments."""
    head = {"index": index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call.name, "arguments": ""}}
    return [head, {"index": index, "function": {"arguments": call.arguments}}]


class Completions:
    def __init__(self, llm: LLM, cfg: ServeConfig, batcher: Batcher, stats: Stats):
        self.llm, self.cfg, self.batcher, self.stats = llm, cfg, batcher, stats
        self.model_id = llm.name
        from scratchlm.finetune.adapter_bank import adapter_names

        self.adapters = adapter_names(llm.model)  # served by name over the base
        self.model_ids = [llm.name, *self.adapters]
        self.prompt_cap = min(cfg.max_prompt_tokens or llm.context_length, llm.context_length)

    def sampling(self, req: Sampling, prompt_len: int, field: str, logprobs: int | None = None,
                 grammar=None) -> SamplingParams:
        llm, cfg = self.llm, self.cfg
        if req.model not in (None, *self.model_ids):
            raise APIError(404, f"model {req.model!r} is not served here (serving "
                                f"{', '.join(map(repr, self.model_ids))})", "model",
                           "not_found_error")
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
        vocab = llm.model.cfg.vocab_size
        if req.logit_bias and max(req.logit_bias) >= vocab:
            raise APIError(400, f"logit_bias names token {max(req.logit_bias)}; the vocabulary "
                                f"has {vocab}", "logit_bias")
        temperature, top_k, top_p = llm.defaults.resolve(req.temperature, req.top_k, req.top_p)
        return SamplingParams(max_tokens, temperature, top_k, top_p, llm.stop_ids, req.seed,
                              logit_bias=req.logit_bias,
                              presence_penalty=req.presence_penalty or 0.0,
                              frequency_penalty=req.frequency_penalty or 0.0,
                              grammar=grammar, logprobs=logprobs,
                              adapter=req.model if req.model in self.adapters else None)

    async def run(self, prompt_ids: list[int], params: SamplingParams, stops: list[str]):
        """Async iterator of (text piece, its tokens' log-probabilities, finish_reason, tokens
        so far) for one row through the batcher."""
        stats = self.stats
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = self.batcher.submit(prompt_ids, params, lambda tok, reason: loop.call_soon_threadsafe(
            q.put_nowait, (tok, reason)))
        text = TextStream(self.llm.tokenizer, stops)
        stats.active += 1
        stats.prompt_tokens += len(prompt_ids)
        first, seen, got = None, 0, 0  # log-probabilities sent; tokens taken from the queue
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
                    yield text.finish(), req.logprobs[seen:got], reason, req.generated
                    return
                got += 1
                piece = text.push(tok)
                if text.stopped:
                    req.cancel()
                    yield piece, req.logprobs[seen:got], "stop", req.generated
                    return
                if piece:
                    yield piece, req.logprobs[seen:got], None, req.generated
                    seen = got
        finally:
            req.cancel()  # the client left: free its row
            stats.active -= 1
            stats.completion_tokens += req.generated
            if first is not None:
                stats.decode_seconds += time.perf_counter() - first

    async def pieces(self, prompt_ids, params, stops, plan, counts: list, index: int):
        """One choice's ``Piece``s: the text read for calls when its ``plan`` offered tools
        (only the first call when ``parallel_tool_calls`` is false). ``counts[index]``: its
        tokens so far."""
        parser = plan.parser() if plan is not None else None
        calls = 0
        async for text, lps, reason, n in self.run(prompt_ids, params, stops):
            counts[index] = n
            parts = (parser.push(text) + (parser.finish() if reason else [])) if parser else [text]
            # the text between and after calls is their separators
            parts = [p for p in parts if p != "" and not (
                parser and parser.calls and isinstance(p, str) and not p.strip())]
            if plan is not None and plan.single:
                kept = []
                for p in parts:
                    if isinstance(p, ParsedCall):
                        calls += 1
                        if calls > 1:
                            continue
                    kept.append(p)
                parts = kept
            for j, part in enumerate(parts):
                yield Piece(part if isinstance(part, str) else "",
                            part if isinstance(part, ParsedCall) else None,
                            lps if j == 0 else [])
            if not parts and lps:
                yield Piece(logprobs=lps)
            if reason is not None:
                yield Piece(reason=reason)

    async def respond(self, kind: str, req: Sampling, prompt_ids: list[int], stops: list[str],
                      request: Request, logprobs: int | None = None, grammar=None, plan=None):
        params = self.sampling(req, len(prompt_ids), "messages" if kind == "chat" else "prompt",
                               logprobs, grammar)
        n = req.n or 1
        rows = [params if params.seed is None else replace(params, seed=params.seed + i)
                for i in range(n)]  # n samples, each reproducible under its seed
        answer = Answer(kind, req.model or self.model_id, self.llm.tokenizer)
        counts = [0] * n
        streams = [self.pieces(prompt_ids, p, stops, plan, counts, i)
                   for i, p in enumerate(rows)]
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._events(answer, streams, counts, len(prompt_ids),
                                                  include),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await self._whole(answer, streams, counts, len(prompt_ids), request)

    async def _whole(self, answer: Answer, streams, counts, prompt_len: int, request: Request):
        async def collect(stream):
            return [p async for p in stream]

        tasks = [asyncio.ensure_future(collect(s)) for s in streams]

        async def stop_all():
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=0.25, return_when=asyncio.FIRST_EXCEPTION)
            failed = next((t for t in tasks if t.done() and not t.cancelled()
                           and t.exception() is not None), None)
            if failed is not None:  # one choice failed: the others' rows are freed too
                await stop_all()
                raise failed.exception()
            if not all(t.done() for t in tasks) and await request.is_disconnected():
                await stop_all()  # a client that leaves cancels its generations
                return JSONResponse({"error": {"message": "client disconnected",
                                               "type": "invalid_request_error"}}, 499)
        choices = [self._choice(answer, i, t.result()) for i, t in enumerate(tasks)]
        return JSONResponse({**answer.head(False), "choices": choices,
                             "usage": usage(prompt_len, sum(counts))})

    def _choice(self, answer: Answer, index: int, pieces: list[Piece]) -> dict:
        text = "".join(p.text for p in pieces)
        calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": p.call.name, "arguments": p.call.arguments}}
                 for p in pieces if p.call]
        reason = next((p.reason for p in pieces if p.reason), "stop")
        entries = [e for p in pieces for e in p.logprobs]
        lp = answer.logprobs(entries) if entries else None
        if answer.kind == "text":
            return {"index": index, "text": text, "finish_reason": reason, "logprobs": lp}
        if calls and reason == "stop":
            reason = "tool_calls"
        message = {"role": "assistant", "content": None if calls and not text.strip() else text}
        if calls:
            message["tool_calls"] = calls
        return {"index": index, "message": message, "finish_reason": reason, "logprobs": lp}

    async def _events(self, answer: Answer, streams, counts, prompt_len: int, include: bool):
        head = answer.head(True)
        chat = answer.kind == "chat"
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index, stream):
            try:
                async for piece in stream:
                    await queue.put((index, piece))
            except APIError as e:
                await queue.put((index, e))
            finally:
                await queue.put((index, None))

        if chat:
            for i in range(len(streams)):
                yield sse({**head, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                      "content": ""},
                                                "logprobs": None, "finish_reason": None}]})
        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
        live, calls, offsets = len(streams), [0] * len(streams), [0] * len(streams)
        try:
            while live:
                index, piece = await queue.get()
                if piece is None:
                    live -= 1
                    continue
                if isinstance(piece, APIError):
                    yield sse({"error": {"message": piece.message, "type": piece.kind}})
                    continue
                lp = answer.logprobs(piece.logprobs, offsets[index]) if piece.logprobs else None
                if lp and not chat:  # the next piece's tokens start where these end
                    offsets[index] = lp["text_offset"][-1] + len(lp["tokens"][-1])
                if piece.reason is not None:
                    reason = "tool_calls" if chat and calls[index] and piece.reason == "stop" \
                        else piece.reason
                    body = {"delta": {}} if chat else {"text": ""}
                    yield sse({**head, "choices": [{"index": index, **body, "logprobs": None,
                                                    "finish_reason": reason}]})
                elif piece.call is not None:
                    for j, delta in enumerate(call_delta(calls[index], piece.call)):
                        yield sse({**head, "choices": [{"index": index, "delta": {
                            "tool_calls": [delta]}, "logprobs": lp if j == 0 else None,
                            "finish_reason": None}]})
                    calls[index] += 1
                elif piece.text or lp:
                    body = {"delta": {"content": piece.text}} if chat else {"text": piece.text}
                    yield sse({**head, "choices": [{"index": index, **body, "logprobs": lp,
                                                    "finish_reason": None}]})
        finally:
            for t in tasks:
                t.cancel()
        if include:
            yield sse({**head, "choices": [], "usage": usage(prompt_len, sum(counts))})
        yield "data: [DONE]\n\n"

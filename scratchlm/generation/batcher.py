"""Continuous batching for a server: requests join a running batch at any decode step and leave
it when they finish, each with its own sampling settings and seed.

A worker thread owns the engine and a ``SlotBatch`` (``generation/slots.py``): a fixed set of
``max_batch`` KV-cache rows. Before every decode step it admits the waiting requests that fit
(a free row, room for their prompt and ``max_new_tokens``; an idle batch takes the longest
waiting prompt first so the others fit behind it), prefilling each into its row, up to
``prefill_budget`` prompt tokens per step so the running rows never wait long for newcomers (a
longer prompt is prefilled ``prefill_budget`` tokens a step in a cache of its own, then joins:
chunked prefill); then every row samples its token and reports it through its own callback,
finished rows (stop token, their ``max_new_tokens``, or cancellation by the consumer) leave, and
one decode forward serves the rest. A short request that arrives while a long one decodes joins
at the next step instead of waiting for the long one to end; one big matrix multiply per step
still serves every row, which is where the throughput of batching comes from.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.generation.slots import SlotBatch, Staged

# callback(token, finish_reason): a token with reason None, then once (None, "stop" | "length"
# | "error: ...") at the end. A token's log-probabilities (params.logprobs) are in
# ``Request.logprobs`` before its callback runs.
Callback = Callable[[int | None, str | None], None]


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    callback: Callback
    cancelled: bool = False
    generated: int = 0
    finished: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    # each reported token's TokenLogprob (params.logprobs set), appended before its callback
    logprobs: list = field(default_factory=list)

    def cancel(self) -> None:
        """The consumer needs no more tokens (a stop string matched, the client left)."""
        self.cancelled = True

    def finish(self, reason: str) -> None:
        if not self.finished:
            self.finished = True
            self.callback(None, reason)


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, window_s: float = 0.01,
                 prefill_budget: int = 256, prefix_cache: bool = True):
        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self.prefix_cache = prefix_cache  # copy a shared prompt start (generation/slots.py)
        # prompt tokens prefilled between two decode steps (at least one prompt): the running
        # rows wait for at most about this much prefill per step
        self.prefill_budget = prefill_budget
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self.waiting: list[Request] = []  # submitted, not yet in the batch (worker's own)
        self.staging: tuple[Request, Staged] | None = None  # a long prompt prefilled in chunks
        self.steps = 0  # decode steps taken
        self.largest = 0  # the most rows decoded in one step
        self._thread = threading.Thread(target=self._loop, name="scratchlm-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               callback: Callback) -> Request:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_new_tokens > self.engine.max_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens plus max_tokens "
                             f"{params.max_new_tokens} exceeds the context of {self.engine.max_len}")
        req = Request(list(prompt_ids), params, callback)
        self._queue.put(req)
        return req

    def queue_length(self) -> int:
        """Requests submitted and not yet decoding."""
        return self._queue.qsize() + len(self.waiting)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self, block: bool) -> bool:
        """Move submitted requests into ``waiting`` (waiting ``window_s`` for company when the
        batch is idle); False once ``close`` was called."""
        try:
            first = self._queue.get(timeout=None) if block else self._queue.get_nowait()
        except queue.Empty:
            return True
        if first is None:
            return False
        self.waiting.append(first)
        deadline = time.perf_counter() + (self.window_s if block else 0.0)
        while True:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                return True
            if nxt is None:
                return False
            self.waiting.append(nxt)

    def _chunked(self, batch: SlotBatch, req: Request) -> bool:
        """Whether ``req``'s prompt is prefilled in chunks (``_stage``) rather than at once:
        over the budget, while rows decode, in a full cache."""
        return bool(batch.rows) and len(req.prompt_ids) > self.prefill_budget \
            and batch.cache.can_shift

    def _stage(self, batch: SlotBatch) -> None:
        """Chunked prefill: the next ``prefill_budget`` tokens of the staged prompt (one
        started when a prompt over the budget waits while rows decode), and its join once
        done and a row is free."""
        if self.staging is None:
            long = next((r for r in self.waiting
                         if not r.cancelled and self._chunked(batch, r)), None)
            if long is not None:
                self.waiting.remove(long)
                self.staging = (long, batch.stage(long.prompt_ids, long.params.adapter))
        if self.staging is None:
            return
        req, staged = self.staging
        try:
            if req.cancelled:
                self.staging = None
                req.finish("stop")
            elif not staged.finished:
                batch.advance(staged, self.prefill_budget)
            elif batch.fits(len(req.prompt_ids), req.params.max_new_tokens):
                self.staging = None
                batch.join_staged(staged, req.params, req)
        except Exception as e:  # its prefill failed: tell its client, keep the rest
            self.staging = None
            req.finish(f"error: {e}")

    def _admit(self, batch: SlotBatch) -> None:
        self._stage(batch)
        if not batch.rows:  # an idle batch: the longest first, so the others fit behind it
            self.waiting.sort(key=lambda r: -len(r.prompt_ids))
        group: list[Request] = []  # prefilled together, in one forward
        for req in list(self.waiting):
            if req.cancelled:
                self.waiting.remove(req)
                req.finish("stop")
                continue
            if self._chunked(batch, req):
                continue  # prefilled in chunks while the rows decode (_stage)
            cost = batch.prefill_cost([r.prompt_ids for r in [*group, req]],
                                      [r.params.adapter for r in [*group, req]])
            if group and cost > self.prefill_budget:
                continue  # after the next decode step
            if batch.fits_all([(len(r.prompt_ids), r.params.max_new_tokens)
                               for r in [*group, req]]):
                group.append(req)
                self.waiting.remove(req)
        if group:
            try:
                batch.join_all([(r.prompt_ids, r.params, r) for r in group])
            except Exception as e:  # their prefill failed: tell their clients, keep the rest
                for r in group:
                    r.finish(f"error: {e}")

    def _loop(self) -> None:
        batch = SlotBatch(self.engine, self.max_batch, prefix_cache=self.prefix_cache)
        self.batch = batch  # read-only for callers: its counters (reused prefix tokens)
        running = True
        while running or batch.rows or self.staging is not None:
            if running:
                running = self._take(block=not batch.rows and not self.waiting
                                     and self.staging is None)
            try:
                self._admit(batch)
                if not batch.rows:
                    continue
                self.steps += 1
                self.largest = max(self.largest, len(batch.rows))
                for row, tok in batch.sample():
                    req = row.tag
                    if isinstance(tok, Exception):  # this row's failure ends this row alone
                        req.finish(f"error: {tok}")
                        batch.leave(row)
                        continue
                    if req.cancelled or tok in req.params.stop_ids:
                        req.finish("stop")
                        batch.leave(row)
                        continue
                    if row.logprob is not None:
                        req.logprobs.append(row.logprob)
                    req.callback(tok, None)
                    req.generated += 1
                    if row.finished:  # its grammar is complete
                        req.finish("stop")
                        batch.leave(row)
                    elif req.generated >= req.params.max_new_tokens:
                        req.finish("length")
                        batch.leave(row)
                batch.forward()
            except Exception as e:  # a failed step must not hang its clients
                for row in list(batch.rows):
                    row.tag.finish(f"error: {e}")
                    batch.leave(row)
        for req in self.waiting:
            req.finish("stop")
        if self.staging is not None:
            self.staging[0].finish("stop")

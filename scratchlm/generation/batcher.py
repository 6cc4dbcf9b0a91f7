"""Dynamic batching for a server: requests that arrive together are decoded together.

A worker thread owns the engine. It waits for a request, gathers whatever else arrives within
``window_s`` (up to ``max_batch``), groups requests that can share one decode (same sampling
settings; greedy requests always can) and fit the context together, and runs each group through
``Engine.stream``. Every row reports its tokens through its own callback and stops on its own
(stop token, its ``max_new_tokens``, or cancellation by the consumer); a group ends when all its
rows have. One big matrix multiply per step serves every row, which is where the throughput of
batching comes from on CPU and GPU alike.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from scratchlm.generation.engine import Engine, SamplingParams

# callback(token, finish_reason): a token with reason None, then once (None, "stop" | "length"
# | "error: ...") at the end.
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

    def cancel(self) -> None:
        """The consumer needs no more tokens (a stop string matched, the client left)."""
        self.cancelled = True

    def finish(self, reason: str) -> None:
        if not self.finished:
            self.finished = True
            self.callback(None, reason)


def _key(p: SamplingParams) -> tuple:
    if p.temperature == 0:
        return ("greedy",)
    return (p.temperature, p.top_k, p.top_p, p.seed)


def plan_groups(requests: Sequence[Request], max_len: int, max_batch: int) -> list[list[Request]]:
    """Requests that can share one decode: equal sampling settings, and the longest prompt plus
    the largest ``max_new_tokens`` fit the context (left padding aligns prompts to the longest)."""
    groups: list[list[Request]] = []
    for req in sorted(requests, key=lambda r: len(r.prompt_ids)):
        for g in groups:
            longest = max(len(req.prompt_ids), *(len(r.prompt_ids) for r in g))
            most = max(req.params.max_new_tokens, *(r.params.max_new_tokens for r in g))
            if (len(g) < max_batch and _key(g[0].params) == _key(req.params)
                    and longest + most <= max_len):
                g.append(req)
                break
        else:
            groups.append([req])
    return groups


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, window_s: float = 0.01):
        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="scratchlm-batcher", daemon=True)
        self._thread.start()
        self.batches: list[int] = []  # sizes of the groups decoded so far (for stats and tests)

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

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            deadline = time.perf_counter() + self.window_s
            while len(pending) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                pending.append(nxt)
            for group in plan_groups([r for r in pending if not r.cancelled],
                                     self.engine.max_len, self.max_batch):
                self._run(group)
            for r in pending:
                r.finish("stop")  # cancelled before they started

    def _run(self, group: list[Request]) -> None:
        self.batches.append(len(group))
        params = replace(group[0].params, max_new_tokens=max(r.params.max_new_tokens for r in group),
                         stop_ids=tuple(sorted({i for r in group for i in r.params.stop_ids})))
        try:
            steps = self.engine.stream([r.prompt_ids for r in group], params)
            for step in steps:
                for req, tok in zip(group, step):
                    if req.finished:
                        continue
                    if req.cancelled or tok is None or tok in req.params.stop_ids:
                        req.finish("stop")
                        continue
                    req.callback(tok, None)
                    req.generated += 1
                    if req.generated >= req.params.max_new_tokens:
                        req.finish("length")
                if all(r.finished for r in group):
                    steps.close()
                    break
            for req in group:
                req.finish("length")  # the context was full
        except Exception as e:  # a failed decode must not hang its clients
            for req in group:
                req.finish(f"error: {e}")

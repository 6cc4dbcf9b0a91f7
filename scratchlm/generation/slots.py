"""Continuous batching: a fixed set of KV-cache rows ("slots") that requests join and leave
between decode steps, each with its own sampling settings and seed.

    join:   a prompt of P tokens is prefilled alone into a free row, ending at the batch's
            current slot L: it fills slots [L - P, L) and its first real slot is L - P, so the
            slots before it (a previous occupant's) are masked. An empty batch starts at L = P.
    step:   every active row samples its next token from its own logits (greedy, or its own
            temperature / top-k / top-p and seeded generator), then one decode forward over
            the active rows writes slot L of each and gives the next logits; L += 1.
    leave:  a finished row's slot is refilled by the last active row (its keys and values are
            copied), so the active rows are always rows [0, n) and a step computes n rows, not
            the whole slot count.

A request can join when a row is free and it fits the cache. A prompt longer than L first
shifts the running rows' slots P - L later (their first real slots with them, so no position
changes; one copy of the filled slots) when they all still have room for their remaining
tokens; with a sliding-window cache, whose ring buffers do not shift, it waits the few steps
until L has grown past it (or until the batch empties). Positions count from each row's first real slot, so a row's
tokens see exactly what a single-request decode would (tested equal, token for token, on the
native C decoder and on PyTorch's path). The same KV cache the engine uses serves, with the
views of ``nn/kv_cache.py``; sliding-window caches too.

Chunked prefill: a long prompt joining a running batch is prefilled a chunk at a time into a
one-row cache of its own (``stage``, ``advance``), between decode steps, so the running rows
keep decoding; when it is done, its keys and values are copied into a free row ending at L
(``join_staged``), as a prefix is. Positions count from a row's first real slot, so the copy is
exact. Full caches only.

Prefix caching: a key or value at position t depends only on tokens 0..t, so a prompt that
begins with the tokens of an earlier one (a chat template's system prompt, a shared few-shot
header) need not compute them again. The batch keeps the keys and values of recent joining
rows' first ``prefix_max`` tokens (``generation/prefixes.py``); a request that shares at least
``prefix_min`` leading tokens with one gets those copied into its row and prefills only the
rest (each such row in its own forward, as a shorter padded row would overwrite its copied
slots). Full caches only: ring buffers hold slots by position modulo the window. A hybrid
model's cache (``nn/hybrid_cache.py``) keeps whole prompts with their linear layers' states,
which are valid at their end only: a request reuses one when it begins with all of it (the
next turn of a conversation); a request that leaves one part way (another conversation after
the same system prompt) is prefilled in two parts there, and the shared part is kept too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scratchlm.finetune.adapter_bank import adapter_names, set_row_adapters
from scratchlm.generation.controls import RowControl, TokenLogprob, token_logprob
from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.generation.prefixes import PrefixStore
from scratchlm.generation.sampling import sample_next


@dataclass(eq=False)  # a row is itself: ``rows.index`` must not compare logits
class Row:
    """One request in the batch; ``tag`` is the caller's handle for it."""

    params: SamplingParams
    tag: object = None
    generator: torch.Generator | None = None
    logits: torch.Tensor | None = None  # (V,) the next token's
    token: int | None = None  # sampled this step, fed at the next forward
    generated: int = 0
    control: RowControl | None = None  # bias, penalties, grammar (generation/controls.py)
    logprob: TokenLogprob | None = None  # this step's token's, when params.logprobs is set

    @property
    def finished(self) -> bool:
        """Its grammar is complete: nothing but the end may follow."""
        return self.control is not None and self.control.finished


@dataclass
class Staged:
    """A prompt being prefilled a chunk at a time into its own one-row cache (``SlotBatch.stage``)."""

    prompt: list[int]
    cache: object  # a KVCache of one row
    adapter: str | None = None  # the named LoRA adapter it runs
    done: int = 0  # tokens prefilled so far
    logits: torch.Tensor | None = None  # (1, V) after the last chunk

    @property
    def finished(self) -> bool:
        return self.done == len(self.prompt)


class SlotBatch:
    prefix_min = 16  # shared leading tokens worth a copy instead of a prefill
    prefix_max = 512  # leading tokens kept for the next requests
    # entries kept: 2 of up to prefix_max tokens' keys and values of every layer; 4 for a
    # hybrid cache (whole prompts, but keys and values of a quarter of the layers, and the
    # states), which also keeps the system prompts it split off
    prefix_entries = {False: 2, True: 4}

    def __init__(self, engine: Engine, slots: int, max_len: int | None = None,
                 capacity: int = 256, prefix_cache: bool = True):
        self.engine, self.slots = engine, slots
        self.max_len = min(max_len or engine.max_len, engine.max_len)
        pad = torch.zeros(slots, dtype=torch.long, device=engine.device)
        # ``capacity`` slots at first, growing as requests need them (nn/kv_cache.py), not
        # max_len up front
        self.cache = engine.new_cache(slots, self.max_len, pad, capacity=capacity)
        self.rows: list[Row] = []  # active rows: rows[i] lives in cache row i
        # recent prompts' first tokens, with what they computed (generation/prefixes.py)
        self.prefix_cache = prefix_cache and self.cache.can_shift
        self.prefixes = PrefixStore(self.cache.prefix_exact, self.prefix_min, self.prefix_max,
                                    self.prefix_entries[self.cache.prefix_exact])
        self.reused = 0  # prompt tokens copied instead of computed, over the batch's life
        # named LoRA adapters on the model: each row runs its own (params.adapter), the base
        # matmul shared (finetune/adapter_bank.py)
        self.adapters = set(adapter_names(engine.model))

    def _use(self, names: list[str | None]) -> None:
        """The adapters of the rows the next forward computes, in order."""
        if self.adapters:
            set_row_adapters(self.engine.model, names)
        elif any(n is not None for n in names):
            raise ValueError("this model has no named adapters to run")

    @property
    def length(self) -> int:
        """The slot the next decode step writes (L)."""
        return self.cache.length

    def fits(self, prompt_len: int, max_new_tokens: int) -> bool:
        """Whether one request of these sizes can join now."""
        return self.fits_all([(prompt_len, max_new_tokens)])

    def fits_all(self, sizes: list[tuple[int, int]]) -> bool:
        """Whether requests of these (prompt length, max_new_tokens) can join together now."""
        if not sizes or len(self.rows) + len(sizes) > self.slots or min(p for p, _ in sizes) < 1:
            return False
        end = max(p for p, _ in sizes)  # L after they join (and after any shift)
        if self.rows:
            if end > self.length and (not self.cache.can_shift or any(
                    end + r.params.max_new_tokens - r.generated > self.max_len
                    for r in self.rows)):
                return False
            end = max(end, self.length)
        return all(end + m <= self.max_len for _, m in sizes)

    def join(self, prompt_ids: list[int], params: SamplingParams, tag: object = None) -> Row:
        """Prefill ``prompt_ids`` into a free row (see the module docstring)."""
        return self.join_all([(prompt_ids, params, tag)])[0]

    @torch.inference_mode()
    def join_all(self, requests: list[tuple[list[int], SamplingParams, object]]) -> list[Row]:
        """Prefill several requests into free rows in one forward: each ends at the new L, left-
        padded to the longest (the padding slots lie before each row's first real slot). Equal
        prompts (n samples of one request) are prefilled once and copied."""
        sizes = [(len(p), s.max_new_tokens) for p, s, _ in requests]
        if not self.fits_all(sizes):
            raise ValueError(f"prompts of {[p for p, _ in sizes]} tokens with max_new_tokens "
                             f"{[m for _, m in sizes]} do not fit the batch now")
        engine, n = self.engine, len(self.rows)
        # the first request of each distinct prompt, then the copies (rows in that order)
        source: dict[tuple, int] = {}
        for i, (prompt, params, _) in enumerate(requests):
            source.setdefault((params.adapter, *prompt), i)
        firsts_of = list(source.values())
        order = firsts_of + sorted(set(range(len(requests))) - set(firsts_of))
        ordered = [requests[i] for i in order]
        k = len(firsts_of)
        longest = max(p for p, _ in sizes)
        end = self._make_room(longest)
        first = torch.tensor([end - len(p) for p, _, _ in ordered], device=engine.device)
        unique = [p for p, _, _ in ordered[:k]]
        names = [s.adapter for _, s, _ in ordered[:k]]
        # a kept prefix serves only prompts run with the adapter that computed it
        entry, shared = self._match(unique, names)
        split = (self.prefixes.split_point(unique[0], names[0])
                 if self.prefix_cache and not shared and k == 1 else 0)
        if shared:
            self._use(names[:1])
            logits = torch.cat([self._prefill_after_prefix(n + i, prompt, end - len(prompt),
                                                           entry, shared)
                                for i, prompt in enumerate(unique)])
        elif split:  # a hybrid prompt leaving a kept one part way: keep the part they share
            self._use(names)
            logits = self._prefill_split(n, unique[0], end - len(unique[0]), split, names[0])
        else:
            idx = torch.zeros(k, longest, dtype=torch.long, device=engine.device)
            for i, prompt in enumerate(unique):
                idx[i, longest - len(prompt):] = torch.tensor(prompt, device=engine.device)
            view = self.cache.view(n, n + k, length=end - longest, pad=first[:k])
            self._use(names)
            logits = engine._last_logits(idx, view)
        row_of = {(a, *p): i for i, (p, a) in enumerate(zip(unique, names))}
        copies = [row_of[(s.adapter, *p)] for p, s, _ in ordered[k:]]
        for j, src in enumerate(copies):
            self.cache.move_row(n + src, n + k + j)
        if copies:
            logits = torch.cat([logits, logits[copies]])
        rows = self._add_rows(ordered, logits, first.tolist(), end)
        by_request = dict(zip(order, rows))
        return [by_request[i] for i in range(len(requests))]

    def _make_room(self, longest: int) -> int:
        """Before rows join with prompts of up to ``longest`` tokens: start an empty batch over
        at slot 0, or shift the running rows when a prompt is longer than L; the new L."""
        if not self.rows:
            self.cache.length = 0
            if self.engine.native is not None:
                self.engine.native.refresh()
            end = longest
        else:
            if longest > self.length:
                self.cache.shift(len(self.rows), longest - self.length)  # room before L
            end = max(self.length, longest)
        self.cache.reserve(end)  # row views share the storage; it grows first
        return end

    def _add_rows(self, requests, logits, firsts: list[int], end: int) -> list[Row]:
        """Rows n.. (already prefilled, first real slots ``firsts``) become active at L = end."""
        n = len(self.rows)
        for i, f in enumerate(firsts):
            self.cache.set_pad(n + i, f)
        self.cache.length = end
        if self.prefix_cache:
            i = max(range(len(requests)), key=lambda j: len(requests[j][0]))  # the longest
            self.prefixes.keep(requests[i][0], requests[i][1].adapter,
                               lambda m: self.cache.save_prefix(n + i, firsts[i], m))
        rows = []
        for (prompt, params, tag), lg in zip(requests, logits):
            gen = None
            if params.seed is not None and params.temperature > 0:
                gen = torch.Generator(device=self.engine.device).manual_seed(params.seed)
            control = RowControl.create(params, lg.shape[-1], lg.device)
            rows.append(Row(params, tag, gen, lg, control=control))
        self.rows += rows
        return rows

    def stage(self, prompt_ids: list[int], adapter: str | None = None) -> Staged:
        """Start prefilling ``prompt_ids`` apart from the batch (chunked prefill: ``advance``
        it between decode steps, then ``join_staged``)."""
        if not self.cache.can_shift:
            raise ValueError("chunked prefill needs a full (not sliding-window) cache")
        n = len(prompt_ids)
        return Staged(list(prompt_ids), self.engine.new_cache(1, n, capacity=n), adapter)

    @torch.inference_mode()
    def advance(self, staged: Staged, tokens: int) -> None:
        """Prefill the next ``tokens`` (at least one) of a staged prompt."""
        chunk = staged.prompt[staged.done:staged.done + max(1, tokens)]
        idx = torch.tensor([chunk], dtype=torch.long, device=self.engine.device)
        self._use([staged.adapter])
        staged.logits = self.engine._last_logits(idx, staged.cache)  # appends to its cache
        staged.done += len(chunk)

    @torch.inference_mode()
    def join_staged(self, staged: Staged, params: SamplingParams, tag: object = None) -> Row:
        """A fully staged prompt joins: its keys and values are copied into a free row ending
        at L (shifting the running rows if it is longer), with its last logits."""
        p = len(staged.prompt)
        if not staged.finished or not self.fits(p, params.max_new_tokens):
            raise ValueError("the staged prompt is not finished or does not fit the batch now")
        n = len(self.rows)
        end = self._make_room(p)
        self.cache.copy_row(staged.cache, 0, n, end - p, p)
        return self._add_rows([(staged.prompt, params, tag)], staged.logits, [end - p], end)[0]

    def prefill_cost(self, prompts: list[list[int]],
                     adapters: list[str | None] | None = None) -> int:
        """Tokens one ``join_all`` of these prompts (run with these adapters) computes: the
        padded batch, or each prompt's part after a shared prefix; equal prompts under one
        adapter once."""
        adapters = adapters or [None] * len(prompts)
        distinct = {(a, *p): None for a, p in zip(adapters, prompts)}
        _, shared = self._match([list(p[1:]) for p in distinct], [p[0] for p in distinct],
                                use=False)
        if shared:
            return sum(len(p) - 1 - shared for p in distinct)
        return len(distinct) * max(len(p) - 1 for p in distinct)

    def _match(self, prompts: list[list[int]], adapters: list[str | None], use: bool = True):
        """(kept entry, shared leading tokens) for prompts that all run one adapter."""
        if not self.prefix_cache or len(set(adapters)) != 1:
            return None, 0
        return self.prefixes.match(prompts, adapters[0], use)

    def _prefill_after_prefix(self, row: int, prompt: list[int], first: int, entry,
                              shared: int) -> torch.Tensor:
        """Copy a kept entry's ``shared`` slots into ``row`` from its first real slot, then
        prefill the rest of ``prompt`` through a one-row view; the (1, V) last logits."""
        self.cache.load_prefix(entry.saved, row, first, shared)
        self.reused += shared
        return self._prefill_from(row, prompt, first, shared)

    def _prefill_from(self, row: int, prompt: list[int], first: int, done: int) -> torch.Tensor:
        """Prefill ``prompt[done:]`` into ``row`` after its first ``done`` tokens (from slot
        ``first``); the (1, V) last logits."""
        pad = torch.tensor([first], device=self.engine.device)
        view = self.cache.view(row, row + 1, length=first + done, pad=pad)
        idx = torch.tensor([prompt[done:]], dtype=torch.long, device=self.engine.device)
        return self.engine._last_logits(idx, view)

    def _prefill_split(self, row: int, prompt: list[int], first: int, split: int,
                       adapter: str | None) -> torch.Tensor:
        """Prefill ``prompt[:split]``, keep it (its states end there), then the rest."""
        self._prefill_from(row, prompt[:split], first, 0)
        self.prefixes.add(prompt[:split], self.cache.save_prefix(row, first, split), adapter)
        return self._prefill_from(row, prompt, first, split)

    @torch.inference_mode()  # a row's control updates tensors made in the prefill
    def sample(self) -> list[tuple[Row, int | Exception]]:
        """Each active row's next token (from its own logits and settings), or the exception
        its sampling raised: one row's failure is that row's alone, and a token the embedding
        has no row for is never fed to the batch's forward."""
        out = []
        vocab = None
        for row in self.rows:
            p = row.params
            try:
                logits = row.logits if row.control is None else row.control.process(row.logits)
                tok = int(sample_next(logits[None], p.temperature, p.top_k, p.top_p,
                                      row.generator)[0, 0])
                vocab = vocab or row.logits.shape[-1]
                if not 0 <= tok < vocab:
                    raise ValueError(f"sampling gave token {tok}, outside the vocabulary of "
                                     f"{vocab}")
                if row.control is not None:
                    row.control.accept(tok)
                if p.logprobs is not None:
                    row.logprob = token_logprob(row.logits, tok, p.logprobs)
            except Exception as e:  # noqa: BLE001 (the caller ends this row with it)
                out.append((row, e))
                continue
            row.token = tok
            row.generated += 1
            out.append((row, tok))
        return out

    def leave(self, row: Row) -> None:
        """Free ``row``'s slot: the last active row moves into it."""
        i, last = self.rows.index(row), len(self.rows) - 1
        if i != last:
            self.cache.move_row(last, i)
            self.rows[i] = self.rows[last]
        self.rows.pop()

    @torch.inference_mode()
    def forward(self) -> None:
        """Feed every active row's sampled token at slot L; their next logits; L += 1."""
        n = len(self.rows)
        if n == 0:
            return
        if self.length >= self.max_len:
            raise ValueError(f"KV cache full at {self.length} slots")
        idx = torch.tensor([[r.token] for r in self.rows], dtype=torch.long,
                           device=self.engine.device)
        self.cache.reserve(self.length + 1)
        view = self.cache.view(0, n)
        self._use([r.params.adapter for r in self.rows])
        logits = self.engine._decode(idx, view)
        self.cache.length = view.length
        for row, lg in zip(self.rows, logits):
            row.logits = lg

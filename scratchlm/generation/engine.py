"""The generation engine: prefill + incremental decode over a preallocated KV cache.

    prompts (ids) --left-pad--> prefill: one forward over all prompt tokens, filling the cache
                                decode:  one token per row per step, attending to the cache

Rows stop independently on any of ``stop_ids``; the batch ends when every row has stopped or
``max_new_tokens`` is reached. Past the context window the engine does what the book's
``generate`` does: each step sees the last ``context_length`` tokens of its row (a prompt
longer than that is cropped the same way). Inside the window that is the cached decode; past
it, every step re-reads the window (a fresh prefill), since the positions of the kept tokens
shift with each new one. Sampling is the same pure function as the naive ``generate``
(greedy at temperature 0), so the engine must match it token for token (tested). Like the rest
of ``generation``, the engine sees ids only; text and stop strings are ``stream_text``'s job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from scratchlm.generation.native_decode import NativeDecoder
from scratchlm.generation.sampling import sample_next
from scratchlm.nn.hybrid_cache import HybridCache
from scratchlm.nn.kv_cache import KVCache, SlidingKVCache
from scratchlm.nn.native import head_linear
from scratchlm.tokenizers.base import held_back
from scratchlm.training.runtime import bf16_native


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None
    # per-row logit controls (generation/controls.py); the continuous batcher applies them
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    presence_penalty: float = 0.0  # minus this once a token was generated
    frequency_penalty: float = 0.0  # minus this per time a token was generated
    grammar: object | None = None  # a generation.grammar.Grammar the row's tokens must follow
    logprobs: int | None = None  # report each token's log-probability and this many alternatives
    adapter: str | None = None  # the named LoRA adapter this row runs (finetune/adapter_bank.py)

    def controlled(self) -> list[str]:
        """The per-row settings given (which ``Engine.generate`` does not apply)."""
        return [name for name, off in (("logit_bias", None), ("presence_penalty", 0.0),
                                       ("frequency_penalty", 0.0), ("grammar", None),
                                       ("logprobs", None), ("adapter", None))
                if getattr(self, name) not in (off, {})]


def _kv_shape(model: nn.Module) -> tuple[int, int, int]:
    """(n_layer, n_kv_head, head_dim) of a GPT or Llama model."""
    cfg = model.cfg
    return cfg.n_layer, getattr(cfg, "n_kv_head", cfg.n_head), cfg.head_dim


PREFILL_PRECISIONS = ("fp32", "bf16", "auto")


class Engine:
    """``prefill``: the precision of prompt processing (many positions at once, a matmul):
    ``fp32``, or ``bf16`` autocast (about twice as fast where bf16 products are native, with
    bf16's rounding in the prompt's keys, values and first logits), or ``auto`` (bf16 where
    native, ``training/runtime.bf16_native``). One-token steps are unaffected."""

    def __init__(self, model: nn.Module, max_len: int | None = None, prefill: str = "fp32"):
        if prefill not in PREFILL_PRECISIONS:
            raise ValueError(f"prefill precision must be one of {PREFILL_PRECISIONS}, got "
                             f"{prefill!r}")
        self.model = model.eval()
        self.max_len = max_len or model.cfg.context_length
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if self.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            self.dtype = torch.float32  # quantized weights: activations stay float
        # Llama / GPT on CPU: one-token steps in native code (generation/native_decode.py)
        self.native = NativeDecoder.create(model) if self.dtype == torch.float32 else None
        if prefill == "auto":
            prefill = "bf16" if bf16_native(self.device.type) else "fp32"
        self.prefill = prefill if self.dtype == torch.float32 else "fp32"  # else: its own dtype

    def new_cache(self, batch: int, length: int, pad: torch.Tensor | None = None,
                  capacity: int | None = None) -> KVCache:
        """A cache for ``length`` slots (``capacity`` allocated at first, growing as written);
        models with sliding-window layers get one whose local layers keep only their window
        (``SlidingKVCache``), hybrid models one with their linear layers' states
        (``HybridCache``); a model that builds its own (``model.new_cache``: Gemma 4, whose
        layers differ in shape and share keys) is asked."""
        own = getattr(self.model, "new_cache", None)
        if own is not None:
            return own(batch, length, self.dtype, self.device, pad, capacity)
        n_layer, n_kv, head_dim = _kv_shape(self.model)
        blocks = self.model.trf_blocks
        hybrid = HybridCache.for_blocks(blocks, batch, n_kv, length, head_dim, self.dtype,
                                        self.device, pad, capacity)
        if hybrid is not None:
            return hybrid
        windows = [getattr(b.att, "window", 0) for b in blocks]
        if any(windows):
            return SlidingKVCache(windows, batch, n_kv, length, head_dim, self.dtype,
                                  self.device, pad, capacity)
        return KVCache(n_layer, batch, n_kv, length, head_dim, self.dtype, self.device, pad,
                       capacity)

    def _last_logits(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits of the last position only: a 512-token prefill needs one row of the
        (vocabulary-sized) output head, not 512."""
        low = self.prefill == "bf16" and idx.shape[1] > 1  # a prompt, not a one-token step
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
            h = self.model.hidden_states(idx, cache, last=1)[:, -1, :]  # (B, C)
        return head_linear(self.model.out_head, h.to(self.dtype))[:, : self.model.cfg.vocab_size]

    def _decode(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if self.native is not None:
            return self.native.logits(idx, cache)
        return self._last_logits(idx, cache)

    def stream(self, prompts: Sequence[Sequence[int]],
               params: SamplingParams = SamplingParams()) -> Iterator[list[int | None]]:
        """Yield, per decode step, each row's new token (None once that row has stopped)."""
        for out, _ in self._steps(prompts, params, logprobs=False):
            yield out

    def sample(self, prompts: Sequence[Sequence[int]],
               params: SamplingParams = SamplingParams()) -> list[tuple[list[int], list[float]]]:
        """(new tokens, their log-probabilities) per row, the stop token included when a row
        hit one. The log-probability is the token's under the distribution sampled from before
        top-k / top-p filtering: ``log_softmax(logits / temperature)`` (plain logits when
        greedy), which is what a trainer recomputes (``rl/grpo.py``)."""
        outs: list[tuple[list[int], list[float]]] = [([], []) for _ in prompts]
        for step, lps in self._steps(prompts, params, logprobs=True):
            for (ids, lp), tok, value in zip(outs, step, lps):
                if tok is not None:
                    ids.append(tok)
                    lp.append(value)
        return outs

    @torch.inference_mode()
    def _steps(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
               logprobs: bool) -> Iterator[tuple[list[int | None], list[float] | None]]:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
        if params.controlled():
            raise ValueError(f"{', '.join(params.controlled())}: applied by the continuous "
                             "batcher (generation/batcher.py, the server), not by "
                             "Engine.generate")
        b = len(prompts)
        rows = [list(p)[-self.max_len:] for p in prompts]  # the book crops to the context
        longest = max(len(p) for p in rows)
        cached = min(params.max_new_tokens, self.max_len - longest)  # steps inside the window
        if self.native is not None:
            self.native.refresh()
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(params.seed)
        stop = torch.tensor(params.stop_ids or [-1], device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)

        cache = None
        for step in range(params.max_new_tokens):
            if step == 0 or step > cached:  # prefill, or past the window: read the last window
                cache, logits = self._prefill(rows, max(cached - step, 0))
            else:
                logits = self._decode(nxt, cache)  # decode: (B, V)
            nxt = sample_next(logits, params.temperature, params.top_k, params.top_p, gen)  # (B, 1)
            hit = torch.isin(nxt[:, 0], stop)
            out = [None if d else int(t) for d, t in zip(done.tolist(), nxt[:, 0].tolist())]
            lps = None
            if logprobs:
                scaled = logits.float() / (params.temperature if params.temperature > 0 else 1.0)
                lps = torch.log_softmax(scaled, -1).gather(1, nxt).squeeze(1).tolist()
            done |= hit
            yield out, lps
            if bool(done.all()):
                return
            for row, tok in zip(rows, nxt[:, 0].tolist()):
                row.append(tok)
                if len(row) > self.max_len:
                    del row[0]

    def _prefill(self, rows: list[list[int]], room: int) -> tuple[KVCache, torch.Tensor]:
        """A cache holding the rows (left-padded) with ``room`` slots to go, and each row's
        last logits (B, V). Equal rows are computed once and copied: G samples of one prompt
        (GRPO's groups, best-of-N) prefill it once, not G times."""
        idx, pad = self._left_pad(rows)
        uniq, inverse = torch.unique(idx, dim=0, return_inverse=True)
        if len(uniq) == len(rows):
            cache = self.new_cache(len(rows), idx.shape[1] + room, pad)
            return cache, self._last_logits(idx, cache)
        pad_u = torch.zeros(len(uniq), dtype=pad.dtype, device=pad.device).scatter_(
            0, inverse, pad)
        cache = self.new_cache(len(uniq), idx.shape[1] + room, pad_u)
        logits = self._last_logits(uniq, cache)[inverse]
        cache.select_rows(inverse)
        return cache, logits

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids, left-padded to the longest row, and (B,) pad counts."""
        longest = max(len(r) for r in rows)
        pad = torch.tensor([longest - len(r) for r in rows], device=self.device)
        idx = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            idx[i, longest - len(r):] = torch.tensor(r, device=self.device)
        return idx, pad

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams = SamplingParams()) -> list[list[int]]:
        """New tokens per row; a row's stop token ends it and is not included."""
        outs: list[list[int]] = [[] for _ in prompts]
        finished = [False] * len(prompts)
        for step in self.stream(prompts, params):
            for i, tok in enumerate(step):
                if tok is None or finished[i]:
                    continue
                if tok in params.stop_ids:
                    finished[i] = True
                else:
                    outs[i].append(tok)
        return outs


class TextStream:
    """Incremental detokenization of one row: ``push(token)`` returns the new text that is safe
    to show, ``finish()`` what was held back. Text is released only when it is whole UTF-8 and
    cannot be the start of a stop string; ``stopped`` turns true when a stop string appears
    (it is not emitted).

    Each push costs the new token's text, not the whole sequence's: the ids are decoded from a
    few tokens back (``prefix``), as vLLM's detokenizer does, so a tokenizer that treats the
    first token specially (a leading space) sees the same first token twice; and a stop string
    is searched for only where it can still begin, after the released text."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer, self.stop_strings = tokenizer, [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.text = ""  # the whole characters decoded so far
        self.sent = 0  # characters of self.text released so far
        self.stopped = False
        self.prefix = self.read = 0  # ids[prefix:read] decode to the end of self.text

    def _decode_new(self) -> bool:
        """Append the text of the ids after ``read`` to ``self.text``; False while it ends in
        an incomplete character."""
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        if after.endswith("\ufffd"):
            return False  # a multi-byte character is not complete yet
        if after.startswith(before):
            self.text += after[len(before):]
        else:  # the window's text changed with the new token: decode it all once
            self.text = self.tokenizer.decode(self.ids)
        self.prefix, self.read = self.read, len(self.ids)
        return True

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        if not self._decode_new():
            return ""
        text, start = self.text, self.sent
        # a stop string cannot begin inside the released text: that text was released only
        # once no stop string could start in it
        cut = min((i for i in (text.find(s, start) for s in self.stop_strings) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            piece = text[start:cut]
            self.sent = cut
            return piece
        hold = max((held_back(text, s) for s in self.stop_strings), default=0)
        if len(text) - hold > start:
            piece = text[start:len(text) - hold]
            self.sent = len(text) - hold
            return piece
        return ""

    def finish(self) -> str:
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids)
        piece = text[self.sent:]
        self.sent = len(text)
        return piece


def stream_text(engine: Engine, tokenizer, prompt_ids: Sequence[int],
                params: SamplingParams, stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Stream the decoded text of one prompt, ending at a stop id or stop string (which is not
    emitted); see ``TextStream``."""
    text = TextStream(tokenizer, stop_strings)
    for step in engine.stream([list(prompt_ids)], params):
        tok = step[0]
        if tok is None or tok in params.stop_ids:
            break
        piece = text.push(tok)
        if piece:
            yield piece
        if text.stopped:
            return
    piece = text.finish()
    if piece:
        yield piece

"""The prompt starts a continuous batch keeps for later requests (prefix caching,
``generation/slots.py``): a few entries, each some token ids with the cache's copy of what
they computed (``KVCache.save_prefix``) and the adapter that computed it.

    match:  the entry that shares the most leading tokens with the prompts (each keeping one
            token to prefill), when that is at least ``min_tokens``
    keep:   a joining prompt's first ``max_tokens`` tokens, one entry per start of
            ``min_tokens`` tokens (a longer prompt with that start replaces it); the least
            recently used entry goes when there are more than ``entries``

A hybrid model's cache (``nn/hybrid_cache.py``, ``prefix_exact``) holds its linear layers'
states at the end of what it computed, so an entry serves only prompts that begin with all of
it, and keeps whole prompts. ``split_point`` finds where a prompt leaves an entry (a system
prompt shared by conversations that differ after it): the batch prefills the prompt in two
parts there and keeps the first as an entry of its own, which the next such prompt reuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Prefix:
    ids: list[int]
    saved: object  # the cache's save_prefix of these tokens
    adapter: str | None  # the LoRA adapter that computed it


def _common(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class PrefixStore:
    def __init__(self, exact: bool, min_tokens: int = 16, max_tokens: int = 512,
                 entries: int = 3):
        self.exact, self.min_tokens, self.max_tokens = exact, min_tokens, max_tokens
        self.entries_max = entries
        self.entries: list[Prefix] = []  # least recently used first

    def match(self, prompts: list[list[int]], adapter: str | None,
              use: bool = True) -> tuple[Prefix | None, int]:
        """(entry, leading tokens every prompt shares with it) for the entry that shares the
        most, or (None, 0) below ``min_tokens``; a prompt always keeps one token to prefill.
        ``use``: the entry is about to be copied (it becomes the most recently used)."""
        best, shared = None, 0
        for entry in self.entries:
            if entry.adapter != adapter:
                continue
            n = len(entry.ids)
            for prompt in prompts:
                n = _common(prompt, entry.ids, min(n, len(prompt) - 1))
            if self.exact and n < len(entry.ids):
                n = 0  # its states hold the whole entry or nothing
            if n >= self.min_tokens and n > shared:
                best, shared = entry, n
        if best is not None and use:  # recently used: the last to go
            self.entries.remove(best)
            self.entries.append(best)
        return best, shared

    def split_point(self, prompt: list[int], adapter: str | None) -> int:
        """Exact caches: the most leading tokens (at least ``min_tokens``, fewer than the
        prompt's) that ``prompt`` shares with an entry it leaves part way; 0 if none."""
        if not self.exact:
            return 0
        most = 0
        for entry in self.entries:
            if entry.adapter == adapter:
                n = _common(prompt, entry.ids, min(len(entry.ids), len(prompt) - 1))
                if n < len(entry.ids):
                    most = max(most, n)
        return most if most >= self.min_tokens else 0

    def keep(self, prompt: list[int], adapter: str | None, save: Callable[[int], object]) -> None:
        """Keep ``prompt``'s first tokens, saved by ``save(n)``. An exact cache keeps the
        whole prompt (unless kept already). Otherwise one entry stands for each start of
        ``min_tokens`` tokens under an adapter (one per system prompt): a longer prompt with
        the same start replaces it, a shorter one leaves it."""
        n = len(prompt) if self.exact else min(len(prompt), self.max_tokens)
        ids = list(prompt[:n])
        for entry in self.entries:
            if entry.adapter != adapter:
                continue
            if self.exact and entry.ids == ids:
                return
            if not self.exact and entry.ids[:self.min_tokens] == ids[:self.min_tokens]:
                if len(entry.ids) >= n:
                    return
                self.entries.remove(entry)
                break
        self.add(ids, save(n), adapter)

    def add(self, ids: list[int], saved: object, adapter: str | None) -> None:
        """A new entry; the least recently used goes beyond ``entries``."""
        self.entries.append(Prefix(list(ids), saved, adapter))
        del self.entries[:-self.entries_max]

"""Preallocated key/value caches for incremental decoding.

``KVCache``: keys and values of every layer live in two tensors of shape
(n_layer, B, n_kv_head, max_len, head_dim). Prompts of different lengths are left-padded:
row b starts with ``pad[b]`` padding slots, which no query may attend to, and its token
positions count from its first real token. ``length`` is the number of slots filled so far.

``SlidingKVCache``: the same for models with local (sliding-window) layers, whose keys older
than the window can never be attended again. A local layer keeps only its last ``window``
slots in a ring buffer (slot s lives at s % window), so its memory stops growing with length;
global layers keep every slot as above.

    global layer:  [s0 s1 s2 s3 s4 s5 s6 s7 s8 s9]       (max_len slots)
    local layer:   [s8 s9 s6 s7]                          (window 4: slot s at s % 4)

Attention asks the cache through ``attend(layer, k, v, window)``, which stores the new keys and
returns what SDPA needs: all keys a query may see and the boolean mask over them.

Continuous batching (``generation/slots.py``) treats the rows as slots that requests join and
leave: ``view(lo, hi, length, pad)`` is rows [lo, hi) as a cache sharing this one's storage (a
joining row is prefilled through a one-row view that starts at its own slot), ``set_pad``
changes a row's first real slot, ``move_row`` copies one row over another, ``select_rows``
makes a batch of copies (G samples of one prompt share its prefill).

Memory: a cache may start with fewer slots than ``max_len`` (``capacity``) and grows, doubling,
as slots are written (``reserve``); a server's batch of 16 rows at SmolLM2's 8,192-token
context would otherwise take 6 GB (and 5 s of page faults) before its first request. Views
share the storage they were cut from, so they never grow: the owner reserves first.
"""

from __future__ import annotations

import torch


class KVCache:
    can_shift = True  # ``shift`` works (a sliding cache's ring buffers do not shift)
    prefix_exact = False  # True: a saved prefix serves only prompts that begin with all of it

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 pad: torch.Tensor | None = None, capacity: int | None = None):
        cap = max_len if capacity is None else max(1, min(capacity, max_len))
        shape = (n_layer, batch, n_kv_head, cap, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.is_view = False
        self.pad = pad.to(device) if pad is not None else torch.zeros(batch, dtype=torch.long,
                                                                       device=device)
        self.has_pad = bool(self.pad.any())  # checked once, not per layer and step
        self.max_len = max_len
        self.length = 0
        self._mask_key, self._mask = None, None

    def positions(self, t: int) -> torch.Tensor:
        """(B, T) token positions of the next ``t`` slots (0 at each row's first real token)."""
        slots = torch.arange(self.length, self.length + t, device=self.pad.device)
        return (slots[None, :] - self.pad[:, None]).clamp(min=0)

    def mask(self, t: int, window: int = 0) -> torch.Tensor | None:
        """Boolean mask (True: may attend) for the next ``t`` queries, (B, 1, T, length + T)
        with padding or (T, length + T) without, or None when plain causal attention is exact.
        ``window`` > 0: a query sees only the last ``window`` slots, its own included."""
        if not self.has_pad and not window:
            return None
        key = (self.length, t, window)
        if self._mask_key != key:  # every layer of a step asks for the same mask
            mask = self.mask_causal(t, window)
            if self.has_pad:
                keys = torch.arange(self.length + t, device=self.pad.device)
                real = keys[None, :] >= self.pad[:, None]  # (B, S)
                mask = (mask[None] & real[:, None, :])[:, None]  # (B, 1, T, S)
            self._mask, self._mask_key = mask, key
        return self._mask

    def mask_causal(self, t: int, window: int = 0) -> torch.Tensor:
        """(T, length + T) causal mask for ``t`` queries after ``length`` cached slots."""
        keys = torch.arange(self.length + t, device=self.pad.device)[None, :]
        queries = torch.arange(self.length, self.length + t, device=self.pad.device)[:, None]
        allowed = keys <= queries
        if window:
            allowed &= queries - keys < window
        return allowed

    @property
    def capacity(self) -> int:
        """Slots allocated now (at most ``max_len``)."""
        return self.k.shape[3]

    def reserve(self, slots: int) -> None:
        """Make room for ``slots`` slots: grow (at least doubling, at most to ``max_len``),
        keeping what is written."""
        if slots <= self.capacity:
            return
        if slots > self.max_len:
            raise ValueError(f"KV cache full: {slots} slots needed, {self.max_len} allocated")
        if self.is_view:
            raise RuntimeError("a view of a KV cache cannot grow: reserve on its owner first")
        cap = min(self.max_len, max(slots, 2 * self.capacity))
        # normal tensors even when decoding under inference_mode: a row moves outside it
        with torch.inference_mode(False):
            for name in ("k", "v"):
                old = getattr(self, name)
                new = old.new_zeros((*old.shape[:3], cap, old.shape[4]))
                new[:, :, :, :self.length] = old[:, :, :, :self.length]
                setattr(self, name, new)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write (B, KV, T, D) keys/values at the next slots of ``layer``; return all so far."""
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} slots needed, {self.max_len} allocated")
        self.reserve(end)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int = 0):
        """Store (B, KV, T, D) new keys/values of ``layer``; return (keys, values, mask,
        is_causal) for ``F.scaled_dot_product_attention`` of the T new queries."""
        t, start = k.shape[2], self.length
        k, v = self.update(layer, k, v)
        if window and start + t > window:
            return k, v, self.mask(t, window), False
        mask = self.mask(t)
        if mask is not None:
            return k, v, mask, False
        # No padding: a prefill from slot 0 is plain causal; one new token sees every key.
        if start == 0 or t == 1:
            return k, v, None, t > 1
        return k, v, self.mask_causal(t), False

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def advance(self, t: int) -> None:
        self.length += t

    def view(self, lo: int, hi: int, length: int | None = None,
             pad: torch.Tensor | None = None) -> "KVCache":
        """Rows [lo, hi) as a cache on the same storage, at ``length`` (default this cache's)
        with ``pad`` (default these rows' own); its writes land in this cache."""
        v = object.__new__(type(self))
        v.__dict__.update(self.__dict__)
        v.k, v.v = self.k[:, lo:hi], self.v[:, lo:hi]
        v.is_view = True
        v.pad = self.pad[lo:hi] if pad is None else pad.to(self.pad.device)
        v.has_pad = bool(v.pad.any())
        v.length = self.length if length is None else length
        v._mask_key, v._mask = None, None
        return v

    def set_pad(self, row: int, first_slot: int) -> None:
        """Row ``row``'s real tokens now start at ``first_slot`` (slots before it are masked)."""
        self.pad[row] = first_slot
        self.has_pad = bool(self.pad.any())
        self._mask_key = None

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` (keys, values, first slot) over row ``dst``."""
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]
        self.set_pad(dst, int(self.pad[src]))

    def copy_row(self, other: "KVCache", src: int, dst: int, first: int, n: int) -> None:
        """Row ``src`` of ``other`` (its slots [0, n): a prompt prefilled alone) into row
        ``dst`` at slots [first, first + n)."""
        self.k[:, dst, :, first:first + n] = other.k[:, src, :, :n]
        self.v[:, dst, :, first:first + n] = other.v[:, src, :, :n]

    def save_prefix(self, row: int, first: int, n: int):
        """A copy of row ``row``'s ``n`` slots from ``first`` (a prompt's first tokens), for
        ``load_prefix`` into later rows."""
        return (self.k[:, row, :, first:first + n].clone(),
                self.v[:, row, :, first:first + n].clone())

    def load_prefix(self, saved, row: int, first: int, n: int) -> None:
        """The first ``n`` slots of a ``save_prefix`` into row ``row`` from slot ``first``."""
        k, v = saved
        self.k[:, row, :, first:first + n] = k[:, :, :n]
        self.v[:, row, :, first:first + n] = v[:, :, :n]

    def select_rows(self, index: torch.Tensor) -> None:
        """The rows become rows ``index`` of this cache (copied; a row may repeat): a prompt
        prefilled once serves every row that starts with it (``Engine``)."""
        if self.is_view:
            raise RuntimeError("a view of a KV cache cannot change its rows")
        self.k, self.v = self.k[:, index], self.v[:, index]
        self.pad = self.pad[index]
        self.has_pad = bool(self.pad.any())
        self._mask_key = None

    def shift(self, rows: int, by: int) -> None:
        """Move the filled slots of rows [0, rows) ``by`` slots later (their first real slots
        too), so a longer prompt can end at the new ``length``; positions do not change."""
        end = self.length
        if end + by > self.max_len:
            raise ValueError(f"KV cache full: {end + by} slots needed, {self.max_len} allocated")
        self.reserve(end + by)
        for t in (self.k, self.v):
            t[:, :rows, :, by:end + by] = t[:, :rows, :, :end].clone()
        self.pad[:rows] += by
        self.has_pad = bool(self.pad.any())
        self._mask_key = None
        self.length = end + by


class SlidingKVCache(KVCache):
    """A cache whose local layers (``windows[i]`` > 0) keep only their last ``windows[i]``
    slots; see the module docstring. Same interface as ``KVCache``. ``local_shape``:
    (key/value heads, head_dim) of the local layers where they differ from the global layers'
    (Gemma 4's); those keep a ring even when the window is as long as the cache, of
    min(window, max_len) slots (a ring that never wraps is the whole sequence)."""

    def __init__(self, windows: list[int], batch: int, n_kv_head: int, max_len: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", pad: torch.Tensor | None = None,
                 capacity: int | None = None, local_shape: tuple[int, int] | None = None):
        if local_shape is None:  # a window as long as the cache: global
            windows = [w if w < max_len else 0 for w in windows]
        super().__init__(windows.count(0), batch, n_kv_head, max_len, head_dim, dtype, device,
                         pad, capacity)
        local_kv, local_dim = local_shape or (n_kv_head, head_dim)
        self.windows = windows
        self.where: list[int] = []  # layer -> index into self.k (global) or self.ring (local)
        self.ring_k: list[torch.Tensor] = []
        self.ring_v: list[torch.Tensor] = []
        g = 0
        for w in self.windows:
            if w:
                shape = (batch, local_kv, min(w, max_len), local_dim)
                self.where.append(len(self.ring_k))
                self.ring_k.append(torch.zeros(shape, dtype=dtype, device=device))
                self.ring_v.append(torch.zeros(shape, dtype=dtype, device=device))
            else:
                self.where.append(g)
                g += 1

    def nbytes(self) -> int:
        ring = sum(t.numel() * t.element_size() for t in self.ring_k) * 2
        return super().nbytes() + ring

    def view(self, lo: int, hi: int, length: int | None = None,
             pad: torch.Tensor | None = None) -> "SlidingKVCache":
        v = super().view(lo, hi, length, pad)
        v.ring_k = [t[lo:hi] for t in self.ring_k]
        v.ring_v = [t[lo:hi] for t in self.ring_v]
        return v

    def move_row(self, src: int, dst: int) -> None:
        for t in (*self.ring_k, *self.ring_v):
            t[dst] = t[src]
        super().move_row(src, dst)

    def select_rows(self, index: torch.Tensor) -> None:
        self.ring_k = [t[index] for t in self.ring_k]
        self.ring_v = [t[index] for t in self.ring_v]
        super().select_rows(index)

    can_shift = False

    def shift(self, rows: int, by: int) -> None:
        raise NotImplementedError("a sliding-window cache's ring buffers do not shift")

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int = 0):
        w = self.windows[layer]
        if not w:
            return super().attend(self.where[layer], k, v, window)
        t, start = k.shape[2], self.length
        if start + t > self.max_len:
            raise ValueError(f"KV cache full: {start + t} slots needed, {self.max_len} allocated")
        rk, rv = self.ring_k[self.where[layer]], self.ring_v[self.where[layer]]
        n = rk.shape[2]  # the ring's slots: the window, or max_len when that is shorter
        dev = self.pad.device
        # the slot each ring position holds (before this step's writes); < 0 where still empty
        ring_slot = torch.arange(n, device=dev)
        ring_slot = ring_slot + (start - 1 - ring_slot) // n * n  # the latest s < start, s = j mod n
        slots = torch.cat([ring_slot, torch.arange(start, start + t, device=dev)])  # (N + T,)
        keys, values = torch.cat([rk, k], dim=2), torch.cat([rv, v], dim=2)  # (B, KV, W + T, D)
        queries = torch.arange(start, start + t, device=dev)[:, None]
        allowed = (slots[None] >= 0) & (slots[None] <= queries) & (queries - slots[None] < w)
        if self.has_pad:
            allowed = (allowed[None] & (slots[None, None] >= self.pad[:, None, None]))[:, None]
        # keep the newest n of the new keys
        keep = min(t, n)
        pos = torch.arange(start + t - keep, start + t, device=dev) % n
        rk[:, :, pos] = k[:, :, t - keep:]
        rv[:, :, pos] = v[:, :, t - keep:]
        return keys, values, allowed, False

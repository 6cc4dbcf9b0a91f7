"""A preallocated key/value cache for incremental decoding.

Keys and values of every layer live in two tensors of shape
(n_layer, B, n_kv_head, max_len, head_dim). Prompts of different lengths are left-padded:
row b starts with ``pad[b]`` padding slots, which no query may attend to, and its token
positions count from its first real token. ``length`` is the number of slots filled so far.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 pad: torch.Tensor | None = None):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
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

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write (B, KV, T, D) keys/values at the next slots of ``layer``; return all so far."""
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} slots needed, {self.max_len} allocated")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        self.length += t

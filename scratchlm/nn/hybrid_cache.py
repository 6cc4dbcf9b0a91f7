"""The cache of a hybrid model (Qwen3.5): a KV cache for its attention layers and, for each
linear-attention layer (``nn/gated_deltanet.py``), a fixed-size state per row.

    attention layer i:  keys/values (B, KV, slots, D)    grows with the sequence, as KVCache
    linear layer j:     conv (B, conv_dim, K - 1)         the convolution's last K - 1 inputs
                        state (B, Hv, Dk, Dv) fp32        the delta rule's fast weights

Everything the engine and continuous batching ask of a ``KVCache`` works the same way (rows,
views, padding, joining, leaving, shifting): a view cuts the states' rows too; a row whose real
tokens begin in the current forward (its first real slot >= ``length``, as a joining row's or
a fresh prompt's) starts from zero states, so a slot's previous occupant never leaks into it;
left padding is zeroed input, which keeps a zero state zero. Shifting slots changes no state.

Prefix reuse (``save_prefix`` / ``load_prefix``): a state holds a whole prefix at one position
only, so a saved prefix is reusable only in full (``prefix_exact``), by a prompt that begins
with all of its tokens: a conversation's next turn, not a shared system prompt that diverges
earlier.
"""

from __future__ import annotations

import torch

from scratchlm.nn.kv_cache import KVCache


class HybridCache(KVCache):
    prefix_exact = True  # a saved prefix is reused whole or not at all

    def __init__(self, linear: list[bool], batch: int, n_kv_head: int, max_len: int,
                 head_dim: int, conv_dim: int, conv_kernel: int, state_shape: tuple[int, int, int],
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 pad: torch.Tensor | None = None, capacity: int | None = None):
        super().__init__(linear.count(False), batch, n_kv_head, max_len, head_dim, dtype, device,
                         pad, capacity)
        self.where: list[int] = []  # layer -> index into self.k (attention) or the states
        n_att = n_lin = 0
        for lin in linear:
            self.where.append(n_lin if lin else n_att)
            n_lin, n_att = n_lin + lin, n_att + (not lin)
        self.conv = torch.zeros(n_lin, batch, conv_dim, conv_kernel - 1, dtype=dtype,
                                device=device)
        self.state = torch.zeros(n_lin, batch, *state_shape, dtype=torch.float32, device=device)

    @classmethod
    def for_blocks(cls, blocks, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                   dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                   pad: torch.Tensor | None = None,
                   capacity: int | None = None) -> "HybridCache | None":
        """A cache for a model's blocks when some are linear-attention layers (a block with
        a ``lin`` GatedDeltaNet), else None."""
        linear = [hasattr(b, "lin") for b in blocks]
        if not any(linear):
            return None
        lin = next(b.lin for b in blocks if hasattr(b, "lin"))
        return cls(linear, batch, n_kv_head, max_len, head_dim, lin.conv_dim,
                   lin.conv.kernel_size[0], (lin.n_value_heads, lin.key_dim, lin.value_dim),
                   dtype, device, pad, capacity)

    # -- what the layers ask
    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int = 0):
        return super().attend(self.where[layer], k, v, window)

    def real_positions(self, t: int) -> torch.Tensor:
        """(B, T) True where the next ``t`` slots hold real tokens (not left padding)."""
        slots = torch.arange(self.length, self.length + t, device=self.pad.device)
        return slots[None, :] >= self.pad[:, None]

    def linear_state(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv inputs, state) of linear layer ``layer`` for these rows, written in place by
        the layer; rows whose real tokens start in this forward are zeroed first."""
        conv, state = self.conv[self.where[layer]], self.state[self.where[layer]]
        fresh = self.pad >= self.length  # (B,)
        if bool(fresh.any()):
            conv[fresh] = 0
            state[fresh] = 0
        return conv, state

    # -- rows
    def nbytes(self) -> int:
        return super().nbytes() + sum(t.numel() * t.element_size()
                                      for t in (self.conv, self.state))

    def view(self, lo: int, hi: int, length: int | None = None,
             pad: torch.Tensor | None = None) -> "HybridCache":
        v = super().view(lo, hi, length, pad)
        v.conv, v.state = self.conv[:, lo:hi], self.state[:, lo:hi]
        return v

    def move_row(self, src: int, dst: int) -> None:
        self.conv[:, dst] = self.conv[:, src]
        self.state[:, dst] = self.state[:, src]
        super().move_row(src, dst)

    def select_rows(self, index: torch.Tensor) -> None:
        super().select_rows(index)
        self.conv, self.state = self.conv[:, index], self.state[:, index]

    def copy_row(self, other: "HybridCache", src: int, dst: int, first: int, n: int) -> None:
        super().copy_row(other, src, dst, first, n)
        self.conv[:, dst] = other.conv[:, src]
        self.state[:, dst] = other.state[:, src]

    def save_prefix(self, row: int, first: int, n: int):
        return (*super().save_prefix(row, first, n), self.conv[:, row].clone(),
                self.state[:, row].clone())

    def load_prefix(self, saved, row: int, first: int, n: int) -> None:
        super().load_prefix(saved[:2], row, first, n)
        self.conv[:, row] = saved[2]
        self.state[:, row] = saved[3]

"""Attention over packed rows, one piece at a time instead of through a mask of the whole row.

A packed row holds several sequences side by side (``nn/doc_mask.py``: documents;
``nn/shared_prefix.py``: a group's completions after their shared prompt). Each sequence
attends only to itself (and to a shared prefix), so a boolean mask over the whole row is
mostly False: for a row of N tokens it costs N x N scores, where the sequences need
sum(n_i x (P + n_i)). ``PackedMask`` keeps the pieces instead and runs SDPA on each (causal,
the flash kernel, where there is no prefix and no window): what flex attention's block-sparse
masks do, without a compiler. ``dense()`` gives the same as a boolean mask, for attention that
needs one (gpt-oss's sinks).

    piece (row, q_lo, q_hi, prefix, k_lo):  queries [q_lo, q_hi) of batch row ``row`` see
        keys [0, prefix) of that row, then keys [k_lo, k_lo + q_hi - q_lo) causally: the
        j-th query sees the prefix and keys k_lo .. k_lo + j; with ``window`` > 0 only keys
        less than ``window`` positions back, the prefix's keys counting as the positions
        0 .. prefix - 1 just before k_lo's.

The pieces of a row cover its queries in order, so the outputs are concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PackedMask:
    def __init__(self, pieces: list[tuple[int, int, int, int, int]], shape: tuple[int, int, int],
                 window: int = 0, device=None):
        b, t, _ = shape
        covered = [0] * b
        for row, q_lo, q_hi, _, _ in pieces:
            if q_lo != covered[row] or q_hi <= q_lo:
                raise ValueError(f"PackedMask: the pieces of row {row} must cover its queries "
                                 f"in order, got [{q_lo}, {q_hi}) after {covered[row]}")
            covered[row] = q_hi
        if covered != [t] * b:
            raise ValueError(f"PackedMask: pieces cover {covered} of {t} queries per row")
        self.pieces, self.shape, self.window = pieces, shape, window
        self.device = device
        self._masks: dict[tuple[int, int], torch.Tensor | None] = {}

    def _piece_mask(self, n: int, prefix: int) -> torch.Tensor | None:
        """(n, prefix + n) bool for a piece of n queries, or None: plain causal (SDPA's
        ``is_causal``, top-left aligned, is right when there is no prefix and no window)."""
        key = (n, prefix)
        if key not in self._masks:
            if not prefix and not (self.window and n > self.window):
                self._masks[key] = None
            else:
                q = prefix + torch.arange(n, device=self.device)[:, None]
                s = torch.arange(prefix + n, device=self.device)[None, :]
                mask = s <= q
                if self.window:
                    mask &= q - s < self.window
                self._masks[key] = mask
        return self._masks[key]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float | None = None, dropout: float = 0.0,
                  enable_gqa: bool = False) -> torch.Tensor:
        """q (B, H, T, D), k and v (B, KV, S, D) -> (B, H, T, D), SDPA on each piece."""
        rows: list[list[torch.Tensor]] = [[] for _ in range(q.shape[0])]
        for row, q_lo, q_hi, prefix, k_lo in self.pieces:
            n = q_hi - q_lo
            keys, values = k[row:row + 1, :, k_lo:k_lo + n], v[row:row + 1, :, k_lo:k_lo + n]
            if prefix:
                keys = torch.cat([k[row:row + 1, :, :prefix], keys], 2)
                values = torch.cat([v[row:row + 1, :, :prefix], values], 2)
            mask = self._piece_mask(n, prefix)
            rows[row].append(F.scaled_dot_product_attention(
                q[row:row + 1, :, q_lo:q_hi], keys, values, attn_mask=mask,
                dropout_p=dropout, is_causal=mask is None, scale=scale, enable_gqa=enable_gqa))
        return torch.cat([torch.cat(r, 2) for r in rows])

    def dense(self) -> torch.Tensor:
        """The same as one (B, 1, T, S) boolean mask."""
        b, t, s = self.shape
        out = torch.zeros(b, 1, t, s, dtype=torch.bool, device=self.device)
        for row, q_lo, q_hi, prefix, k_lo in self.pieces:
            n = q_hi - q_lo
            mask = self._piece_mask(n, prefix)
            if mask is None:
                mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
            out[row, 0, q_lo:q_hi, :prefix] = mask[:, :prefix]
            out[row, 0, q_lo:q_hi, k_lo:k_lo + n] = mask[:, prefix:]
        return out


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, causal: bool,
         scale: float | None = None, dropout: float = 0.0,
         enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, or a ``PackedMask``'s pieces."""
    if isinstance(mask, PackedMask):
        return mask.attention(q, k, v, scale, dropout, enable_gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                          is_causal=causal, scale=scale, enable_gqa=enable_gqa)

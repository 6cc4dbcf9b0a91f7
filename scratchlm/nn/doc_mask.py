"""Attention that does not cross documents, for rows packed with several of them.

A packed row holds documents side by side: ``[a a a b b c c c c]``. With ``DocumentMask`` each
token attends only to earlier tokens of its own document (a block-diagonal causal mask, through
SDPA), and positions restart at 0 with each document, so every document is computed as if it
were alone in its row.

    segments  0 0 0 1 1 2 2 2 2          (B, T): the document index of each position
    positions 0 1 2 0 1 0 1 2 3

The models take it where they take a KV cache (``model(ids, mask)``,
``model.hidden_states(ids, mask)``): it answers the same two questions, ``positions(t)`` (for
RoPE or learned position embeddings) and ``attend(layer, k, v, window)`` (what SDPA needs), and
stores nothing.
"""

from __future__ import annotations

import torch


class DocumentMask:
    length = 0  # no cached slots before these tokens

    def __init__(self, segments: torch.Tensor):
        if segments.dim() != 2:
            raise ValueError(f"segments must be (B, T), got shape {tuple(segments.shape)}")
        self.segments = segments
        t = segments.shape[1]
        idx = torch.arange(t, device=segments.device).expand_as(segments)
        starts = torch.ones_like(segments, dtype=torch.bool)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        # the index where each position's document starts: a running max of the start indices
        first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
        self._positions = idx - first  # (B, T)
        same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
        self._mask = (same & torch.ones(t, t, dtype=torch.bool, device=segments.device)
                      .tril())[:, None]  # (B, 1, T, T)
        self._windowed: dict[int, torch.Tensor] = {}

    def positions(self, t: int) -> torch.Tensor:
        """(B, T) position of each token inside its document."""
        if t != self.segments.shape[1]:
            raise ValueError(f"a DocumentMask of {self.segments.shape[1]} positions was given "
                             f"{t} tokens")
        return self._positions

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int = 0):
        """(keys, values, mask, is_causal) for SDPA: the block-diagonal causal mask (limited to
        the last ``window`` positions on a local layer)."""
        if not window:
            return k, v, self._mask, False
        mask = self._windowed.get(window)
        if mask is None:
            t = self.segments.shape[1]
            q = torch.arange(t, device=k.device)
            near = (q[:, None] - q[None, :]) < window  # (T, T)
            mask = self._windowed[window] = self._mask & near
        return k, v, mask, False

    def advance(self, t: int) -> None:
        pass  # nothing is stored between calls


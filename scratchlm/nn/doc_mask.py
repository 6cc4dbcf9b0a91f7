"""Attention that does not cross documents, for rows packed with several of them.

A packed row holds documents side by side: ``[a a a b b c c c c]``. With ``DocumentMask`` each
token attends only to earlier tokens of its own document (a block-diagonal causal mask: SDPA on
each document, ``nn/packed_attention.py``, or one mask of the whole rows when the documents are
many and short), and positions restart at 0 with each document, so every document is computed
as if it were alone in its row.

    segments  0 0 0 1 1 2 2 2 2          (B, T): the document index of each position
    positions 0 1 2 0 1 0 1 2 3

The models take it where they take a KV cache (``model(ids, mask)``,
``model.hidden_states(ids, mask)``): it answers the same two questions, ``positions(t)`` (for
RoPE or learned position embeddings) and ``attend(layer, k, v, window)`` (what SDPA needs), and
stores nothing.
"""

from __future__ import annotations

import torch

from scratchlm.nn.packed_attention import PackedMask

# more documents than this in a batch and the mask of whole rows is used: SDPA per document
# costs a call each
MAX_PIECES = 256


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
        self._runs = starts.cumsum(1)  # (B, T): each position's run of equal values
        # each row's documents as pieces (row, start, end, no prefix, start): attention one
        # document at a time (nn/packed_attention.py) where that is less work than a mask of
        # the whole row, i.e. unless the row's documents are many and short
        begins = starts.nonzero().tolist()  # (row, start) of each document, in order
        pieces = [(row, lo, nxt[1] if nxt and nxt[0] == row else t, 0, lo)
                  for (row, lo), nxt in zip(begins, begins[1:] + [None])]
        area = sum((hi - lo) ** 2 for _, lo, hi, _, _ in pieces)
        self._pieces = pieces if len(pieces) <= MAX_PIECES and 2 * area <= len(segments) * t * t \
            else None
        self._masks: dict[int, torch.Tensor | PackedMask] = {}

    def positions(self, t: int) -> torch.Tensor:
        """(B, T) position of each token inside its document."""
        if t != self.segments.shape[1]:
            raise ValueError(f"a DocumentMask of {self.segments.shape[1]} positions was given "
                             f"{t} tokens")
        return self._positions

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int = 0):
        """(keys, values, mask, is_causal) for SDPA: the block-diagonal causal mask (limited to
        the last ``window`` positions on a local layer), as pieces (``PackedMask``) or as one
        boolean mask."""
        mask = self._masks.get(window)
        if mask is None:
            mask = self._masks[window] = self._mask(window)
        return k, v, mask, False

    def _mask(self, window: int) -> torch.Tensor | PackedMask:
        segments = self.segments
        b, t = segments.shape
        if self._pieces is not None:
            return PackedMask(self._pieces, (b, t, t), window, segments.device)
        q = torch.arange(t, device=segments.device)
        allowed = q[None, :] <= q[:, None]  # (T, T) causal
        if window:
            allowed &= (q[:, None] - q[None, :]) < window
        runs = self._runs  # a document is a run of equal values, as in the pieces
        return ((runs[:, :, None] == runs[:, None, :]) & allowed)[:, None]

    def advance(self, t: int) -> None:
        pass  # nothing is stored between calls


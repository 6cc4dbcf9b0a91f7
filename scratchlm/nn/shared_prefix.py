"""A prompt's keys and values shared, with gradients, by the rows that continue it.

GRPO trains on G completions of one prompt. Run as G rows of prompt + completion, the prompt
goes through every layer G times, and SmolLM2's chat prompt is a third of a row (64 tokens
before 128). With ``SharedPrefix`` the prompt runs once, as one row, and the G completion
rows attend to its keys and values (broadcast, not copied) and then to their own, causally:

    prefix = SharedPrefix(device)
    h_prompt = model.hidden_states(prompt_ids, prefix)     # (1, P): stores each layer's K, V
    prefix.share()
    h_rows = model.hidden_states(completion_ids, prefix)   # (G, T): positions P .. P + T - 1

Packed (``prefix.share(lengths)``), the completions come as one row, side by side without
padding: each attends to the prompt and to its own earlier tokens only, its positions counting
on from the prompt's, as if it ran alone:

    prefix.share([3, 2])
    h = model.hidden_states(torch.cat([c0, c1])[None], prefix)   # (1, 5): [a a a b b]

The completion rows' logits equal the whole rows' (the same attention over the same keys),
and the prompt's gradient is the sum of its G uses, as it is for G copies. It speaks the
``attend`` / ``positions`` / ``advance`` protocol of ``nn/kv_cache.py``'s caches, so every
model family that takes a cache takes it. Block checkpointing recomputes a block in backward
and would store the prompt's keys again; the caller runs without it (``rl/grpo.py``).
"""

from __future__ import annotations

import torch

from scratchlm.nn.attention import sliding_causal_mask
from scratchlm.nn.packed_attention import PackedMask


class SharedPrefix:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (1, KV, P, D)
        self.length = 0  # the prompt's tokens once it has run
        self.shared = False
        self.packed: tuple[torch.Tensor, torch.Tensor] | None = None  # (segment, offset) (T,)
        self._masks: dict[int, PackedMask] = {}  # window -> the packed row's attention

    def share(self, lengths: list[int] | None = None) -> None:
        """The prompt has run: from now on, rows continue it; with ``lengths``, as one packed
        row of continuations of these lengths side by side (the module docstring). Called
        again, the next call's rows continue the prompt in the new way."""
        if not self.keys:
            raise RuntimeError("SharedPrefix.share(): run the prompt through the model first")
        self.shared, self.packed, self._masks = True, None, {}
        if lengths is not None:
            n = torch.as_tensor(lengths, dtype=torch.long, device=self.device)
            if (n < 0).any():
                raise ValueError(f"SharedPrefix.share(): negative lengths {lengths}")
            segment = torch.repeat_interleave(torch.arange(len(n), device=self.device), n)
            starts = torch.cumsum(n, 0) - n
            offset = torch.arange(len(segment), device=self.device) - starts[segment]
            self.packed, self._lengths = (segment, offset), n.tolist()

    def positions(self, t: int) -> torch.Tensor:
        """(1, T) positions of the next ``t`` tokens of every row (packed: of each
        continuation, from the prompt's length on)."""
        if self.shared and self.packed is not None:
            segment, offset = self.packed
            if t != len(segment):
                raise ValueError(f"SharedPrefix: a packed row of {len(segment)} tokens was "
                                 f"given {t}")
            return (self.length + offset)[None]
        return torch.arange(self.length, self.length + t, device=self.device)[None]

    def advance(self, t: int) -> None:
        if not self.shared:
            self.length += t

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, window: int = 0):
        t = k.shape[2]
        if not self.shared:  # the prompt itself: plain causal attention, keys kept
            if k.shape[0] != 1:
                raise ValueError("SharedPrefix: the prompt is one row")
            self.keys[layer] = (k, v)
            if window and t > window:
                return k, v, sliding_causal_mask(t, window, k.device), False
            return k, v, None, True
        pk, pv = self.keys[layer]
        b, p = k.shape[0], pk.shape[2]
        if self.packed is not None:
            if b != 1:
                raise ValueError("SharedPrefix: packed continuations are one row")
            mask = self._masks.get(window)
            if mask is None:  # each continuation: the prompt's keys, then its own
                pieces, at = [], 0
                for m in self._lengths:
                    if m:
                        pieces.append((0, at, at + m, p, p + at))
                        at += m
                mask = self._masks[window] = PackedMask(pieces, (1, t, p + t), window,
                                                        k.device)
            return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), mask, False
        keys = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)  # (B, KV, P + T, D)
        values = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
        q = torch.arange(p, p + t, device=k.device)[:, None]
        s = torch.arange(p + t, device=k.device)[None, :]
        mask = s <= q
        if window:
            mask &= q - s < window
        return keys, values, mask, False

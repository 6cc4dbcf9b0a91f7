"""Normalisation layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """Layer normalisation as in the book (and GPT-2): over the last dimension,

        y = scale * (x - mean) / sqrt(var + eps) + shift,   var biased (divides by n)

    computed with PyTorch's fused ``F.layer_norm`` (same formula, one kernel)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Llama): ``weight * x / sqrt(mean(x^2) + eps)``, computed
    in float32 and cast back, as the reference implementation does.

    ``unit_offset=True`` is Gemma's variant: the stored weight starts at 0 and the scale is
    ``1 + weight`` (so weight decay pulls the scale towards 1, not 0). ``scale=False`` has no
    weight at all (Gemma 4's value norm and router norm)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5, unit_offset: bool = False,
                 scale: bool = True):
        super().__init__()
        self.eps, self.unit_offset, self.dim = eps, unit_offset, emb_dim
        self.weight = (nn.Parameter(torch.zeros(emb_dim) if unit_offset else torch.ones(emb_dim))
                       if scale else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        if self.unit_offset:
            w = 1.0 + w
        return F.rms_norm(x.float(), (self.dim,), w, self.eps).to(x.dtype)

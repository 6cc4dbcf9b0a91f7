"""Feed-forward layers: GELU and the GPT-2 position-wise MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GELU(nn.Module):
    """GELU with GPT-2's tanh approximation,

        0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))

    computed by PyTorch's fused kernel (``approximate="tanh"``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Linear(C -> 4C), GELU, Linear(4C -> C): (B, T, C) -> (B, T, C)."""

    def __init__(self, emb_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or 4 * emb_dim
        self.layers = nn.Sequential(
            nn.Linear(emb_dim, hidden_dim), GELU(), nn.Linear(hidden_dim, emb_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

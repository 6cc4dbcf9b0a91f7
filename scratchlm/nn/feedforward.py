"""Feed-forward layers: GELU, the GPT-2 position-wise MLP, and the gated MLP (SwiGLU / GeGLU,
and gpt-oss's clamped SwiGLU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.nn.fuse import concat_linears
from scratchlm.nn.native import step_linear


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


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class SwiGLU(nn.Module):
    """Llama's gated feed-forward: ``fc3(act(fc1(x)) * fc2(x))``, (B, T, C) -> (B, T, C).
    fc1 is the gate, fc2 the up projection, fc3 the down projection (the book's names).
    ``act="silu"`` is SwiGLU (Llama, Qwen3); ``act="gelu_tanh"`` is GeGLU (Gemma)."""

    def __init__(self, emb_dim: int, hidden_dim: int, bias: bool = False, act: str = "silu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.act = act
        self.fc1 = nn.Linear(emb_dim, hidden_dim, bias=bias)
        self.fc2 = nn.Linear(emb_dim, hidden_dim, bias=bias)
        self.fc3 = nn.Linear(hidden_dim, emb_dim, bias=bias)
        self.fc12 = None  # set by fuse_projections (inference)

    def fuse_projections(self) -> None:
        """Inference: compute the gate and up projections in one matmul (see nn/fuse.py)."""
        if self.fc12 is None:
            self.fc12 = concat_linears([self.fc1, self.fc2])
            del self.fc1, self.fc2

    def gated(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The hidden activations from the gate and up projections: act(gate) * up."""
        return ACTIVATIONS[self.act](gate) * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc12 is None:
            gate, up = step_linear(self.fc1, x), step_linear(self.fc2, x)
        else:
            gate, up = step_linear(self.fc12, x).chunk(2, dim=-1)
        return step_linear(self.fc3, self.gated(gate, up))


class ClampedSwiGLU(SwiGLU):
    """gpt-oss's expert: SwiGLU with biases, both halves clamped to ``limit``, a sharper sigmoid
    (``alpha``) and ``up + 1``:

        gate = min(fc1(x), limit);  up = clamp(fc2(x), -limit, limit)
        fc3(gate * sigmoid(alpha * gate) * (up + 1))
    """

    def __init__(self, emb_dim: int, hidden_dim: int, alpha: float = 1.702, limit: float = 7.0):
        super().__init__(emb_dim, hidden_dim, bias=True)
        self.alpha, self.limit = alpha, limit

    def gated(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate = gate.clamp(max=self.limit)
        up = up.clamp(-self.limit, self.limit)
        return gate * torch.sigmoid(gate * self.alpha) * (up + 1)

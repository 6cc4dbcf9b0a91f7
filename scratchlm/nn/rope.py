"""Rotary position embeddings (RoPE), in the "rotate half" layout of Hugging Face's Llama.

Each head vector is split into two halves (x1, x2); position p rotates the pair
(x1[i], x2[i]) by the angle p * theta_i with theta_i = base^(-2i/d):

    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half(x) = [-x2, x1]

``rope_cache`` stores the sin table with its first half negated, sin' = [-sin, sin], so that
rotate_half(x) * sin == roll(x, d/2) * sin': applying RoPE is then a roll, a multiply and a
multiply-add, not a slice, negate and concatenate of x in every layer (a decode step does this
60 times for a 30-layer model, and each small op costs microseconds).

(llama.cpp's GGUF files store Q/K rows interleaved instead; the GGUF loader undoes that.)
"""

from __future__ import annotations

import math

import torch


def inv_frequencies(head_dim: int, base: float = 10000.0,
                    scaling: dict | None = None) -> torch.Tensor:
    """theta_i for i < head_dim/2, with Llama 3's frequency-dependent scaling when given:
    ``{"factor", "low_freq_factor", "high_freq_factor", "original_context_length"}``, or plain
    linear position interpolation (every theta_i / factor; Gemma 3's global layers) for
    ``{"factor"}`` alone."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if not scaling:
        return inv
    if set(scaling) == {"factor"}:
        return inv / scaling["factor"]
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_context_length"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    # long wavelengths are slowed by `factor`, short ones kept, the band between blended
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(medium, blended, scaled)


def rope_cache(head_dim: int, length: int, base: float = 10000.0, scaling: dict | None = None,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables, each (length, head_dim): [cos, cos] and [-sin, sin]."""
    inv = inv_frequencies(head_dim, base, scaling).to(device)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv)  # (L, D/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin from ``rope_cache``, broadcastable to x, e.g. (T, D) or
    (B, 1, T, D)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin).to(x.dtype)

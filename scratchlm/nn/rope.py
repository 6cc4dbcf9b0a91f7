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
    ``{"factor", "low_freq_factor", "high_freq_factor", "original_context_length"}``, YaRN's
    for ``{"type": "yarn", ...}`` (``yarn_frequencies``), or plain linear position
    interpolation (every theta_i / factor; Gemma 3's global layers) for ``{"factor"}``
    alone, or proportional RoPE for ``{"type": "proportional", "partial_rotary_factor": p}``:
    the first ``p * head_dim / 2`` frequencies as usual (exponents over the whole head), the
    rest zero, so those pairs never turn (Gemma 4's global layers)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if not scaling:
        return inv
    if scaling.get("type") == "proportional":
        inv[proportional_pairs(scaling["partial_rotary_factor"], head_dim):] = 0.0
        return inv / scaling.get("factor", 1.0)
    if scaling.get("type") == "yarn":
        return yarn_frequencies(inv, head_dim, base, scaling)
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


def proportional_pairs(factor: float, head_dim: int) -> int:
    """The frequency pairs proportional RoPE turns: floor(factor * head_dim / 2), as
    transformers and llama.cpp's converter count them (a factor read back as pairs / half
    lands on the same count despite float rounding)."""
    return int(factor * head_dim / 2 + 1e-6)


def yarn_frequencies(inv: torch.Tensor, head_dim: int, base: float, scaling: dict) -> torch.Tensor:
    """YaRN (Peng et al. 2023, as transformers computes it): dimensions that turn fewer than
    ``beta_slow`` times over the original context are interpolated (theta_i / factor), those
    that turn more than ``beta_fast`` times are kept, and a linear ramp blends the band
    between. ``{"type": "yarn", "factor", "original_context_length", "beta_fast" (32),
    "beta_slow" (1), "truncate" (True), "attention_factor" (see ``yarn_attention_factor``)}``."""
    factor, old_ctx = scaling["factor"], scaling["original_context_length"]

    def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times
        return head_dim * math.log(old_ctx / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(scaling.get("beta_fast", 32)), dim_of(scaling.get("beta_slow", 1))
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # no division by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep theta_i), 0: interpolate (theta_i / factor)
    return inv / factor * (1 - keep) + inv * keep


def yarn_attention_factor(scaling: dict | None) -> float:
    """The factor YaRN puts on cos and sin (so on q.k twice): ``attention_factor`` when given,
    else 0.1 ln(factor) + 1 (or DeepSeek's ratio of two such terms with ``mscale`` and
    ``mscale_all_dim``); 1 without YaRN."""
    if not scaling or scaling.get("type") != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor = scaling["factor"]
    if scaling.get("mscale") and scaling.get("mscale_all_dim"):
        return mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"])
    return mscale(factor)


def rope_cache(head_dim: int, length: int, base: float = 10000.0, scaling: dict | None = None,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables, each (length, head_dim): [cos, cos] and [-sin, sin] (times
    YaRN's attention factor under YaRN)."""
    inv = inv_frequencies(head_dim, base, scaling).to(device)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv)  # (L, D/2)
    cos, sin = angles.cos(), angles.sin()
    mult = yarn_attention_factor(scaling)
    if mult != 1.0:
        cos, sin = cos * mult, sin * mult
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin from ``rope_cache``, broadcastable to x, e.g. (T, D) or
    (B, 1, T, D)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin).to(x.dtype)

"""4-bit NormalFloat (NF4) weights, the QLoRA paper's data type (Dettmers et al., 2023,
https://arxiv.org/abs/2305.14314), in plain PyTorch so it runs on CPU.

Weights are cut into blocks of 64; each block is scaled by its absolute maximum into [-1, 1]
and every value is replaced by the nearest of 16 levels placed at quantiles of a normal
distribution (more levels near 0, where most weights are). Two 4-bit indices share a byte, and
each block keeps one float32 scale: about 4.5 bits per weight. With double quantization (the
paper's section 3) the scales are themselves quantized: centred by their mean, then 8-bit in
blocks of 256 with one float32 scale each, about 4.127 bits per weight. ``NF4Linear``
dequantizes on the fly in forward; the weight is frozen (QLoRA trains LoRA adapters on top).

The layout is bitsandbytes' own (``quantize_4bit(w, blocksize=64, quant_type="nf4")``: the same
levels, the first value of a pair in the high nibble, the same absmax; tested byte for byte), so
when bitsandbytes is installed ``NF4Linear`` hands the matmul to ``bitsandbytes.matmul_4bit``:
its CUDA kernels on a GPU, and on CPU a dequantization ~10x faster than ours with the same
result. Without it, the plain-PyTorch path below runs everywhere.
"""

from __future__ import annotations

import os
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])
BLOCK = 64
SCALE_BLOCK = 256  # double quantization: scales per 8-bit block of absmax values


def quantize_nf4(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 of numel/2, float32 absmax per block) for a weight whose numel is a
    multiple of ``block``."""
    flat = w.detach().float().reshape(-1, block)  # (n_blocks, block)
    absmax = flat.abs().amax(dim=1).clamp(min=1e-12)  # (n_blocks,)
    normed = flat / absmax[:, None]
    levels = NF4_LEVELS.to(w.device)
    # nearest level: midpoints between sorted levels split [-1, 1] into 16 bins
    idx = torch.bucketize(normed, (levels[1:] + levels[:-1]) / 2).to(torch.uint8)
    idx = idx.reshape(-1)
    packed = (idx[0::2] << 4) | idx[1::2]
    return packed, absmax


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size,
                   block: int = BLOCK, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    idx = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1).long()
    values = NF4_LEVELS.to(packed.device)[idx].reshape(-1, block) * absmax[:, None]
    return values.reshape(shape).to(dtype)


def quantize_scales(absmax: torch.Tensor, block: int = SCALE_BLOCK):
    """Double quantization of the per-block scales: (int8 codes, float32 scale per ``block``
    codes, the float32 mean that was subtracted)."""
    mean = absmax.mean()
    centred = absmax - mean
    pad = (-centred.numel()) % block
    blocks = F.pad(centred, (0, pad)).reshape(-1, block)
    scale = blocks.abs().amax(dim=1).clamp(min=1e-12) / 127
    codes = torch.round(blocks / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return codes.reshape(-1)[: absmax.numel()], scale, mean


def dequantize_scales(codes: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                      block: int = SCALE_BLOCK) -> torch.Tensor:
    pad = (-codes.numel()) % block
    blocks = F.pad(codes.float(), (0, pad)).reshape(-1, block) * scale[:, None]
    return blocks.reshape(-1)[: codes.numel()] + mean


class NF4Linear(nn.Module):
    """A frozen Linear layer whose weight is stored in NF4 (``double_quant``: with 8-bit
    scales)."""

    def __init__(self, linear: nn.Linear, block: int = BLOCK, double_quant: bool = False):
        super().__init__()
        if linear.weight.numel() % block:
            raise ValueError(f"NF4 needs the weight size to be a multiple of {block}, got "
                             f"{tuple(linear.weight.shape)}")
        self.in_features, self.out_features, self.block = linear.in_features, linear.out_features, block
        packed, absmax = quantize_nf4(linear.weight, block)
        self.register_buffer("weight_nf4", packed)
        self.double_quant = double_quant
        if double_quant:
            codes, scale, mean = quantize_scales(absmax)
            self.register_buffer("absmax_codes", codes)
            self.register_buffer("absmax_scale", scale)
            self.register_buffer("absmax_mean", mean)
        else:
            self.register_buffer("absmax", absmax)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                  requires_grad=False)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = torch.Size((self.out_features, self.in_features))
        return dequantize_nf4(self.weight_nf4, self.absmax_values(), shape, self.block, dtype)

    def absmax_values(self) -> torch.Tensor:
        """The float32 per-block scales (undoing double quantization)."""
        if self.double_quant:
            return dequantize_scales(self.absmax_codes, self.absmax_scale, self.absmax_mean)
        return self.absmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bnb = bitsandbytes()
        if bnb is not None:
            shape = torch.Size((self.out_features, self.in_features))
            state = bnb.functional.QuantState(
                absmax=self.absmax_values(), shape=shape, code=NF4_LEVELS.to(x.device),
                blocksize=self.block, quant_type="nf4", dtype=x.dtype)
            return bnb.matmul_4bit(x, self.weight_nf4.view(-1, 1).t(), quant_state=state,
                                   bias=None if self.bias is None else self.bias.to(x.dtype))
        return self.forward_torch(x)

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The plain-PyTorch path: dequantize the whole weight, then ``F.linear``."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)


@cache
def bitsandbytes():
    """The bitsandbytes module when it is installed and not switched off
    (``SCRATCHLM_BITSANDBYTES=0``), else None."""
    if os.environ.get("SCRATCHLM_BITSANDBYTES", "1") == "0":
        return None
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional  # noqa: F401  (QuantState)
    except ImportError:
        return None
    return bnb


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by Linear weights (NF4 packed + scales for NF4 layers)."""
    total = 0
    for m in model.modules():
        if isinstance(m, NF4Linear):
            total += sum(b.numel() * b.element_size() for b in m.buffers(recurse=False))
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total

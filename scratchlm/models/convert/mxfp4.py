"""MXFP4 (OCP Microscaling FP4), the format gpt-oss's published checkpoints store their experts
in: blocks of 32 weights share one power-of-two scale.

    blocks (..., G, 16) uint8   two 4-bit E2M1 codes per byte, low nibble first:
                                 code -> {0, .5, 1, 1.5, 2, 3, 4, 6} and their negatives (bit 3)
    scales (..., G)     uint8   E8M0: the block's weights are multiplied by 2^(scale - 127)
    -> weights (..., G * 32)

A tensor ``W`` of HF's name arrives as ``W_blocks`` and ``W_scales``; ``join_mxfp4`` pairs them
in a stream of (name, tensor) and yields ``W`` dequantized, whatever order the shards hold them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCK = 32  # weights per scale


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, name: str = "tensor",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., G, 16) uint8 codes and (..., G) uint8 exponents -> (..., G * 32) ``dtype``."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} "
                         f"and {scales.dtype}")
    if blocks.dim() < 3 or blocks.shape[-1] != BLOCK // 2 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"{name}: MXFP4 blocks {tuple(blocks.shape)} and scales "
                         f"{tuple(scales.shape)} do not match ((..., rows, G, 16) and "
                         f"(..., rows, G))")
    lut = torch.tensor(E2M1, dtype=dtype)
    out = torch.empty(*blocks.shape[:-1], BLOCK, dtype=dtype)
    for i in range(blocks.shape[0]):  # one expert at a time: the index tensors stay small
        codes, flat = blocks[i], out[i]
        flat[..., 0::2] = lut[(codes & 0x0F).long()]
        flat[..., 1::2] = lut[(codes >> 4).long()]
        flat.copy_(torch.ldexp(flat, scales[i].to(torch.int32)[..., None] - 127))
    return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * BLOCK)


def join_mxfp4(tensors: Iterable[tuple[str, torch.Tensor]], source: str = "checkpoint"
               ) -> Iterator[tuple[str, torch.Tensor]]:
    """The stream with each ``W_blocks`` / ``W_scales`` pair replaced by ``(W, weights)``, the
    weights (..., rows, G * 32) transposed to (..., G * 32, rows) as transformers holds a
    dequantized gpt-oss expert tensor; every other tensor passes through. A half without its
    other half is an error naming it."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors:
        base, _, part = key.rpartition("_")
        if part not in ("blocks", "scales") or not base:
            yield key, tensor
            continue
        pair = halves.setdefault(base, {})
        pair[part] = tensor
        if len(pair) == 2:
            del halves[base]
            weights = dequantize_mxfp4(pair["blocks"], pair["scales"], f"{source}: {base}")
            yield base, weights.transpose(-1, -2)
    for base, pair in halves.items():
        have = next(iter(pair))
        missing = "scales" if have == "blocks" else "blocks"
        raise ValueError(f"{source}: {base}_{have} has no {base}_{missing} (MXFP4 tensors "
                         f"come in pairs)")

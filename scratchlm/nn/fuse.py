"""Fusing projections that read the same input into one matmul, for inference.

    q_proj, k_proj, v_proj  ->  qkv_proj   (Llama attention)
    fc1 (gate), fc2 (up)    ->  fc12       (SwiGLU)

A decode step multiplies one token by every weight matrix; small matrices cost as much in call
overhead as in arithmetic, so three calls into one saves time without changing a number:
the output rows of the fused weight are the rows of the parts, and an ``Int8Linear`` keeps one
scale per output row, and a ``GGUFLinear`` its blocks per output row, so their parts
concatenate exactly too. The fused modules drop the parts'
names, so fuse a model you only run (quantized, or loaded for chat), not one you train or save.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.nn.gguf_linear import GGUFLinear
from scratchlm.nn.quant import Int8Linear


class MixedLayers(TypeError):
    """Parts of different kinds (LoRA, or weights stored in different formats): not fusable."""


def concat_linears(parts: list[nn.Module]) -> nn.Module:
    """One layer whose output is the parts' outputs concatenated (plain or int8 Linears)."""
    biases = [p.bias for p in parts]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise ValueError("cannot fuse layers where only some have a bias")
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    if all(isinstance(p, Int8Linear) for p in parts):
        return Int8Linear(torch.cat([p.weight_int8 for p in parts]),
                          torch.cat([p.scale for p in parts]), bias)
    if all(isinstance(p, GGUFLinear) for p in parts) and \
            len({(p.qtype, p.act8) for p in parts}) == 1:
        # a row of blocks belongs to one output, so the parts' rows concatenate exactly
        return GGUFLinear(torch.cat([p.blocks for p in parts]), parts[0].qtype,
                          parts[0].in_features, bias, parts[0].act8)
    if all(type(p) is nn.Linear for p in parts):
        w = torch.cat([p.weight.detach() for p in parts])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None,
                          device=w.device, dtype=w.dtype)
        fused.weight.data.copy_(w)
        if bias is not None:
            fused.bias.data.copy_(bias)
        return fused.requires_grad_(False)
    raise MixedLayers(f"cannot fuse {[type(p).__name__ for p in parts]} (LoRA or mixed layers)")


def fuse_projections(model: nn.Module, skip_mixed: bool = False) -> nn.Module:
    """Fuse, in place, every module that offers ``fuse_projections()``; returns the model.
    ``skip_mixed``: parts of different kinds (a GGUF file's V in Q6_K beside Q/K in Q4_1) stay
    separate instead of raising."""
    for module in model.modules():
        if hasattr(module, "fuse_projections") and module is not model:
            try:
                module.fuse_projections()
            except MixedLayers:
                if not skip_mixed:
                    raise
    return model

"""A Linear layer whose weight stays in a GGUF file's own block format: Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1 (blocks of 32 weights) or the K-quants Q4_K, Q5_K and Q6_K (super-blocks of 256);
``nn/gguf_blocks.py`` has each layout:

    Q8_0  34 bytes: d, 32 x int8 q          w = d * q                8.5 bits per weight
    Q4_0  18 bytes: d, 16 bytes of nibbles  w = d * (q - 8)          4.5 bits
    Q4_1  20 bytes: d, m, 16 bytes          w = d * q + m            5.0 bits
    Q5_0  22 bytes: d, fifth bits, nibbles  w = d * (q - 16)         5.5 bits
    Q5_1  24 bytes: d, m, fifth bits, ...   w = d * q + m            6.0 bits
    Q4_K  144 bytes per 256                 w = d*sc*q - dmin*mn     4.5 bits
    Q5_K  176 bytes per 256                 w = d*sc*q - dmin*mn     5.5 bits
    Q6_K  210 bytes per 256                 w = d*sc*(q - 32)        6.6 bits

A model loaded with ``load_gguf(..., keep_quantized=True)`` runs at the file's precision: the
weights are the file's bytes, never dequantized to fp32 nor quantized again to int8 (which
would add a second rounding). A decode step (up to ``KERNEL_MAX_ROWS`` rows of float32 input)
multiplies the blocks as stored in native code (``csrc/decode.c``, ``gguf_linear`` and the
decode layers), reading 4.5-8.5 bits per weight. More rows (a prompt's prefill) and other
dtypes dequantize the weight (in C, or numpy without a compiler) and call ``F.linear``. The
weights are buffers, not parameters: such a layer does not train (dequantize the model,
``load_gguf`` without ``keep_quantized``, to finetune it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.nn.gguf_blocks import BLOCKS, dequantize
from scratchlm.nn.native import ACT8, FORMATS, decode_function
from scratchlm.nn.quant import KERNEL_MAX_ROWS

# the formats the native kernels multiply
KEPT = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


def row_bytes(qtype: str, in_features: int) -> int:
    size, weights = BLOCKS[qtype]
    return in_features // weights * size


def dequantize_blocks(blocks: torch.Tensor, qtype: str, shape: tuple[int, int],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (rows, cols) weight of uint8 ``blocks`` (rows, row bytes): in C when the kernels
    build (parallel), else with numpy (``gguf_blocks.dequantize``); the same values."""
    kernel = decode_function("gguf_dequantize")
    if kernel is not None and blocks.is_cpu:
        blocks = blocks.contiguous()
        out = torch.empty(shape)
        kernel(blocks.data_ptr(), FORMATS[qtype], out.data_ptr(), shape[0], shape[1])
    else:
        out = torch.from_numpy(np.array(dequantize(blocks.cpu().numpy(), qtype, shape)))
    return out.to(device=blocks.device, dtype=dtype)


def check_blocks(blocks: torch.Tensor, qtype: str, in_features: int) -> None:
    """Refuse ``blocks`` that are not rows of whole ``qtype`` blocks for ``in_features``."""
    if qtype not in KEPT:
        raise ValueError(f"GGUFLinear takes {', '.join(KEPT)}, got {qtype}")
    weights = BLOCKS[qtype][1]
    if in_features % weights:
        raise ValueError(f"{qtype} rows are blocks of {weights}; in_features is {in_features}")
    size = row_bytes(qtype, in_features)
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != size:
        raise ValueError(f"{qtype} blocks for {in_features} inputs must be uint8 (rows, "
                         f"{size}), got {blocks.dtype} {tuple(blocks.shape)}")


class GGUFLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` held as GGUF blocks (``qtype``: one of ``KEPT``)."""

    def __init__(self, blocks: torch.Tensor, qtype: str, in_features: int,
                 bias: torch.Tensor | None = None, act8: bool = False):
        super().__init__()
        check_blocks(blocks, qtype, in_features)
        self.qtype, self.in_features, self.out_features = qtype, in_features, blocks.shape[0]
        # round the activations of a decode step (up to KERNEL_MAX_ROWS rows) to 8 bits and
        # multiply integers, as llama.cpp does (csrc/act8.h; quantize="gguf-a8"): faster, not
        # exact
        self.act8 = act8
        self.register_buffer("blocks", blocks.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_blocks(self.blocks, self.qtype, (self.out_features, self.in_features),
                                 dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows <= KERNEL_MAX_ROWS and x.is_cpu and x.dtype is torch.float32:
            kernel = decode_function("gguf_linear")
            if kernel is not None:
                return gguf_matmul(kernel, x, self.blocks, self.qtype, self.bias,
                                   self.out_features, self.act8)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    @property
    def format_code(self) -> int:
        """csrc/decode.c's code for this layer's blocks (with the ACT8 flag when set)"""
        return FORMATS[self.qtype] | (ACT8 if self.act8 else 0)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.qtype}" + \
            (", act8" if self.act8 else "")


def gguf_matmul(kernel, x: torch.Tensor, blocks: torch.Tensor, qtype: str,
                bias: torch.Tensor | None, out_features: int, act8: bool = False) -> torch.Tensor:
    """``csrc/decode.c``'s ``gguf_linear`` (``kernel``, of any build variant) on (..., K) x;
    ``act8``: activations rounded to 8 bits (csrc/act8.h; a build without that path, which
    ``round_activations`` refuses, multiplies in float32)."""
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], out_features)
    rows = x.numel() // x.shape[-1]
    kernel(x.data_ptr(), blocks.data_ptr(), FORMATS[qtype] | (ACT8 if act8 else 0),
           None if bias is None else bias.data_ptr(), y.data_ptr(), rows, out_features,
           x.shape[-1])
    return y


def round_activations(model: nn.Module) -> None:
    """Make every ``GGUFLinear`` of ``model`` round its decode-step activations to 8 bits
    (``quantize="gguf-a8"``); refused, naming them, for formats this build's kernel has no
    integer path for (``nn/native.act8_block_formats``)."""
    from scratchlm.nn.native import act8_block_formats

    layers = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    missing = sorted({m.qtype for m in layers} - act8_block_formats())
    if missing:
        raise ValueError(f"quantize 'gguf-a8': this build's kernels have no 8-bit-activation "
                         f"path for {', '.join(missing)} (it needs an x86 CPU with AVX2 or an "
                         "aarch64 one, and a C compiler); use 'gguf'")
    for m in layers:
        m.act8 = True


class GGUFEmbedding(nn.Module):
    """An embedding table kept as GGUF blocks: a lookup dequantizes only the rows it reads
    (one per token), so the table costs the file's bytes, not fp32's. ``blocks`` may be the
    same tensor as a tied head's ``GGUFLinear``: one copy serves both."""

    def __init__(self, blocks: torch.Tensor, qtype: str, embedding_dim: int):
        super().__init__()
        check_blocks(blocks, qtype, embedding_dim)
        self.qtype, self.embedding_dim = qtype, embedding_dim
        self.num_embeddings = blocks.shape[0]
        self.register_buffer("blocks", blocks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.blocks[idx.reshape(-1)]  # (N, row bytes)
        out = dequantize_blocks(rows, self.qtype, (rows.shape[0], self.embedding_dim))
        return out.reshape(*idx.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.qtype}"


def keep_blocks(model: nn.Module, tensors, rename, tied: bool) -> int:
    """Replace each ``nn.Linear`` (and the ``tok_emb`` embedding) whose file tensor is in a
    ``KEPT`` format by a ``GGUFLinear`` (``GGUFEmbedding``) on the file's bytes, as
    ``quantize_int8`` does with int8; a head ``tied`` to the embedding reads the table's bytes.
    ``tensors``: (name, qtype, (rows, cols), raw bytes) of a file; ``rename(name, blocks)``: the
    (our key, blocks) pairs the loader makes of it (reordering rows as it reorders weights).
    Rows that are not whole blocks stay as loaded. Returns the modules replaced."""
    replaced = 0
    for name, qtype, shape, raw in tensors:
        if qtype not in KEPT or len(shape) != 2 or shape[1] % BLOCKS[qtype][1]:
            continue
        rows, cols = shape
        blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
        for ours, arr in rename(name, blocks):
            data = torch.from_numpy(np.array(arr, copy=True))
            owner = ours.removesuffix(".weight")
            if ours == "tok_emb.weight":
                if type(model.tok_emb) is nn.Embedding:  # every family looks rows up by call
                    model.tok_emb = GGUFEmbedding(data, qtype, cols)
                    replaced += 1
                if not tied:
                    continue
                owner = "out_head"  # the tied head reads the same bytes
            layer = model.get_submodule(owner)
            if type(layer) is not nn.Linear:
                continue
            parent, _, leaf = owner.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf,
                    GGUFLinear(data, qtype, cols, layer.bias))
            replaced += 1
    return replaced

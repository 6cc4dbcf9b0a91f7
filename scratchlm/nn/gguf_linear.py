"""A Linear layer whose weight stays in a GGUF file's own block format: Q8_0, Q4_0 or Q4_1
(llama.cpp's blocks of 32 weights, each block with an fp16 scale, and an fp16 minimum for Q4_1).

    Q8_0  34 bytes: d, 32 x int8 q          w = d * q                8.5 bits per weight
    Q4_0  18 bytes: d, 16 bytes of nibbles  w = d * (q - 8)          4.5 bits
    Q4_1  20 bytes: d, m, 16 bytes          w = d * q + m            5.0 bits
    (element j of a block in byte j's low nibble, element j + 16 in its high nibble)

A model loaded with ``load_gguf(..., keep_quantized=True)`` runs at the file's precision: the
weights are the file's bytes, never dequantized to fp32 nor quantized again to int8 (which
would add a second rounding). A decode step (up to ``KERNEL_MAX_ROWS`` rows of float32 input)
multiplies the blocks as stored in native code (``csrc/decode.c``, ``gguf_linear`` and the
decode layers), reading 4.5-8.5 bits per weight. More rows (a prompt's prefill), other dtypes
or no C compiler dequantize the weight and call ``F.linear``. The weights are buffers, not
parameters: such a layer does not train (dequantize the model, ``load_gguf`` without
``keep_quantized``, to finetune it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.nn.native import FORMATS, decode_function
from scratchlm.nn.quant import KERNEL_MAX_ROWS

BLOCK = 32
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}


def dequantize_blocks(blocks: torch.Tensor, qtype: str, shape: tuple[int, int],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (rows, cols) weight of uint8 ``blocks`` (rows, cols / 32 * block bytes)."""
    b = blocks.reshape(-1, BLOCK_BYTES[qtype])  # (n_blocks, block bytes)
    d = b[:, :2].contiguous().view(torch.float16).float()  # (n_blocks, 1)
    if qtype == "Q8_0":
        w = d * b[:, 2:].contiguous().view(torch.int8).float()
    else:
        qs = b[:, 2:] if qtype == "Q4_0" else b[:, 4:]  # (n_blocks, 16)
        q = torch.cat([qs & 0x0F, qs >> 4], dim=1).float()  # (n_blocks, 32): low, then high
        if qtype == "Q4_0":
            w = d * (q - 8.0)
        else:
            w = d * q + b[:, 2:4].contiguous().view(torch.float16).float()
    return w.reshape(shape).to(dtype)


class GGUFLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` held as GGUF blocks (``qtype``: Q8_0, Q4_0, Q4_1)."""

    def __init__(self, blocks: torch.Tensor, qtype: str, in_features: int,
                 bias: torch.Tensor | None = None):
        super().__init__()
        if qtype not in BLOCK_BYTES:
            raise ValueError(f"GGUFLinear takes {', '.join(BLOCK_BYTES)}, got {qtype}")
        if in_features % BLOCK:
            raise ValueError(f"{qtype} rows are blocks of {BLOCK}; in_features is {in_features}")
        row_bytes = in_features // BLOCK * BLOCK_BYTES[qtype]
        if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != row_bytes:
            raise ValueError(f"{qtype} blocks for {in_features} inputs must be uint8 (rows, "
                             f"{row_bytes}), got {blocks.dtype} {tuple(blocks.shape)}")
        self.qtype, self.in_features, self.out_features = qtype, in_features, blocks.shape[0]
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
                                   self.out_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.qtype}"


def gguf_matmul(kernel, x: torch.Tensor, blocks: torch.Tensor, qtype: str,
                bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``csrc/decode.c``'s ``gguf_linear`` (``kernel``, of any build variant) on (..., K) x."""
    x = x.contiguous()
    y = torch.empty(*x.shape[:-1], out_features)
    rows = x.numel() // x.shape[-1]
    kernel(x.data_ptr(), blocks.data_ptr(), FORMATS[qtype],
           None if bias is None else bias.data_ptr(), y.data_ptr(), rows, out_features,
           x.shape[-1])
    return y


class GGUFEmbedding(nn.Module):
    """An embedding table kept as GGUF blocks: a lookup dequantizes only the rows it reads
    (one per token), so the table costs the file's bytes, not fp32's. ``blocks`` may be the
    same tensor as a tied head's ``GGUFLinear``: one copy serves both."""

    def __init__(self, blocks: torch.Tensor, qtype: str, embedding_dim: int):
        super().__init__()
        GGUFLinear(blocks[:1], qtype, embedding_dim)  # the same checks on the layout
        self.qtype, self.embedding_dim = qtype, embedding_dim
        self.num_embeddings = blocks.shape[0]
        self.register_buffer("blocks", blocks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.blocks[idx.reshape(-1)]  # (N, row bytes)
        out = dequantize_blocks(rows, self.qtype, (rows.shape[0], self.embedding_dim))
        return out.reshape(*idx.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.qtype}"

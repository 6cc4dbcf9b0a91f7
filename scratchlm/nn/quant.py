"""Weight-only int8 quantization for inference.

Each output row of a Linear weight gets its own scale, ``s = max|w_row| / 127``, and the
weight is stored as int8 ``round(w / s)``: a quarter of the fp32 bytes. Activations stay in
floating point. Error per weight is at most ``s / 2``.

Two ways to multiply: a few rows of float32 input (a decode step) go to the native kernel
(``csrc/decode.c``), which reads the int8 weights straight from memory, four times fewer
bytes than fp32, so a memory-bound decode step runs up to about that much faster. Many rows (a
prompt's prefill), other dtypes, autograd or no C compiler dequantize the weight and call
``F.linear``: compute-bound, where the dequantizing is cheap next to the matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.nn.native import decode_function

KERNEL_MAX_ROWS = 16  # above this many input rows, dequantize + F.linear (a GEMM) is faster


class Int8Linear(nn.Module):
    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight_int8.shape[1], weight_int8.shape[0]
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a decode step calls this ~200 times per token, so the checks read buffers straight
        # from ``_buffers`` (nn.Module attribute lookup costs more than a small matvec)
        buf = self._buffers
        w, scale, bias = buf["weight_int8"], buf["scale"], buf["bias"]
        rows = x.numel() // self.in_features
        if (rows <= KERNEL_MAX_ROWS and x.is_cpu and x.dtype is torch.float32
                and scale.dtype is torch.float32 and not x.requires_grad):
            kernel = decode_function("int8_linear")
            if kernel is not None and w.is_contiguous():
                x = x.contiguous()
                y = torch.empty(*x.shape[:-1], self.out_features)
                kernel(x.data_ptr(), w.data_ptr(), scale.data_ptr(),
                       None if bias is None else bias.data_ptr(), y.data_ptr(),
                       rows, self.out_features, self.in_features)
                return y
        return F.linear(x, w.to(x.dtype) * scale[:, None].to(x.dtype), bias)


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` (except names ending in ``skip``) by an ``Int8Linear``, in
    place. A head tied to the embedding is quantized as its own copy; the embedding stays. A
    soft-capped head (``nn/softcap.py``) stays in float, cap and all."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if (isinstance(child, nn.Linear) and not full.endswith(skip)
                    and not getattr(child, "softcap", 0)):
                setattr(module, child_name, Int8Linear.from_linear(child))
    return model

"""Decode steps of an int8 Llama in native code: one C call per layer (``csrc/int8.c``).

    ids (B, 1) -> tok_emb -> [llama_layer_int8 x n_layer] -> final_norm -> out_head -> (B, V)

A batch-1 decode step of a 135M-parameter model reads ~135 MB of int8 weights, a few
milliseconds at memory speed, but in PyTorch it is also ~1,300 small ops of a few microseconds
each, which costs as much again. The C layer does the same arithmetic as ``LlamaBlock`` (RMSNorm,
fused QKV, RoPE, the KV cache write, grouped-query attention over the row's real slots, the
output projection, SwiGLU, both residuals) in one call, on the same KV cache tensors, so prefill
(PyTorch) and decode (here) can be mixed freely. Used by the ``Engine`` for every one-token step
when the model qualifies (see ``NativeLlamaDecoder.create``); its logits are tested equal to
the PyTorch path's.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.models.llama import Llama
from scratchlm.nn.feedforward import SwiGLU
from scratchlm.nn.kv_cache import KVCache
from scratchlm.nn.native import llama_layer_kernel
from scratchlm.nn.quant import Int8Linear


def _int8(layer: nn.Module | None) -> bool:
    return (isinstance(layer, Int8Linear) and layer.weight_int8.is_contiguous()
            and layer.scale.dtype == torch.float32 and layer.weight_int8.device.type == "cpu")


class NativeLlamaDecoder:
    def __init__(self, model: Llama, kernel):
        self.model, self.kernel = model, kernel
        cfg = model.cfg
        self.dims = (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size)
        self.eps = float(cfg.norm_eps)
        # the tensors each layer reads, in the C function's argument order
        self.layers = [
            (b.norm1.weight, b.att.qkv_proj.weight_int8, b.att.qkv_proj.scale, b.att.qkv_proj.bias,
             b.att.out_proj.weight_int8, b.att.out_proj.scale, b.norm2.weight,
             b.ff.fc12.weight_int8, b.ff.fc12.scale, b.ff.fc3.weight_int8, b.ff.fc3.scale)
            for b in model.trf_blocks]

    @classmethod
    def create(cls, model: nn.Module) -> "NativeLlamaDecoder | None":
        """A decoder for ``model`` when it is a CPU float32 Llama whose projections are fused
        int8 (``load_model_and_tokenizer(..., quantize="int8")``) and the kernel builds; else
        None, and the engine keeps the PyTorch path."""
        if not isinstance(model, Llama) or model.tok_emb.weight.dtype != torch.float32:
            return None
        for b in model.trf_blocks:
            if not (isinstance(b.ff, SwiGLU) and _int8(b.att.qkv_proj) and _int8(b.att.out_proj)
                    and _int8(b.ff.fc12) and _int8(b.ff.fc3) and b.att.out_proj.bias is None
                    and b.ff.fc12.bias is None and b.ff.fc3.bias is None
                    and b.norm1.weight.dtype == b.norm2.weight.dtype == torch.float32):
                return None
        kernel = llama_layer_kernel()
        return cls(model, kernel) if kernel is not None else None

    def logits(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """(B, 1) new token ids -> (B, vocab_size) logits, appending to ``cache``."""
        model, (c, h, kv, d, inter) = self.model, self.dims
        b = idx.shape[0]
        if cache.length + 1 > min(cache.max_len, model.cfg.context_length):
            raise ValueError(f"KV cache full: {cache.length + 1} slots needed, "
                             f"{cache.max_len} allocated")
        x = model.tok_emb(idx[:, 0]).contiguous()  # (B, C), updated in place by every layer
        cos, sin = model.rope(cache.length + 1, idx.device)
        pos = cache.positions(1)[:, 0]
        cos, sin = cos[pos].contiguous(), sin[pos].contiguous()  # (B, D)
        start = cache.pad.to(torch.int64).contiguous()
        layer_bytes = cache.k[0].numel() * cache.k.element_size()
        k0, v0 = cache.k.data_ptr(), cache.v.data_ptr()
        for i, w in enumerate(self.layers):
            ptrs = [None if t is None else t.data_ptr() for t in w]
            self.kernel(x.data_ptr(), b, c, h, kv, d, inter, self.eps, *ptrs, cos.data_ptr(),
                        sin.data_ptr(), k0 + i * layer_bytes, v0 + i * layer_bytes,
                        cache.max_len, cache.length, start.data_ptr())
        cache.advance(1)
        return model.out_head(model.final_norm(x))[:, : model.cfg.vocab_size]

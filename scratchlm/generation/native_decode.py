"""Decode steps of a Llama in native code: one C call per layer (``nn/csrc/decode.c``).

    ids (B, 1) -> tok_emb -> [llama_layer x n_layer] -> final_norm -> out_head -> (B, V)

A batch-1 decode step reads every weight once, a few milliseconds at memory speed, but in
PyTorch it is also over a thousand small ops of a few microseconds each, which for a 30-layer
model costs about as much again. The C layer does the same arithmetic as ``LlamaBlock``
(RMSNorm, the Q/K/V projections, RoPE, the KV cache write, grouped-query attention over the
row's real slots, the output projection, SwiGLU, both residuals) in one call, on the same KV
cache tensors, so prefill (PyTorch) and decode (here) mix freely. Weights may be float32
``nn.Linear`` or ``Int8Linear``, separate or fused (``nn/fuse.py``). The ``Engine`` uses it for
every one-token step when the model qualifies (``NativeLlamaDecoder.create``); its logits are
tested equal to the PyTorch path's.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from scratchlm.models.llama import Llama
from scratchlm.nn.feedforward import SwiGLU
from scratchlm.nn.kv_cache import KVCache
from scratchlm.nn.native import Weight, llama_layer_kernel
from scratchlm.nn.quant import Int8Linear


def _supported(layer: nn.Module) -> bool:
    """A float32 ``nn.Linear`` or an ``Int8Linear`` on CPU with contiguous weights."""
    if type(layer) is nn.Linear:
        w, extra = layer.weight, layer.bias
    elif isinstance(layer, Int8Linear):
        if layer.scale.dtype != torch.float32:
            return False
        w, extra = layer.weight_int8, layer.bias
    else:
        return False
    return (w.device.type == "cpu" and w.is_contiguous()
            and (w.dtype == torch.float32 or isinstance(layer, Int8Linear))
            and (extra is None or extra.dtype == torch.float32))


def _projections(block: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the Q/K/V layers, the gate/up layers) of a block, fused or not."""
    att, ff = block.att, block.ff
    qkv = [att.qkv_proj] if att.qkv_proj is not None else [att.q_proj, att.k_proj, att.v_proj]
    gate_up = [ff.fc12] if ff.fc12 is not None else [ff.fc1, ff.fc2]
    return qkv, gate_up


def _weights(layers: list[nn.Module]) -> ctypes.Array:
    arr = (Weight * len(layers))()
    for slot, layer in zip(arr, layers):
        int8 = isinstance(layer, Int8Linear)
        slot.w = (layer.weight_int8 if int8 else layer.weight).data_ptr()
        slot.scale = layer.scale.data_ptr() if int8 else None
        slot.bias = layer.bias.data_ptr() if layer.bias is not None else None
        slot.rows, slot.int8 = layer.out_features, int(int8)
    return arr


class NativeLlamaDecoder:
    def __init__(self, model: Llama, kernel):
        self.model, self.kernel = model, kernel
        cfg = model.cfg
        self.dims = (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size)
        self.eps = float(cfg.norm_eps)
        self.refresh()

    @classmethod
    def create(cls, model: nn.Module) -> "NativeLlamaDecoder | None":
        """A decoder for ``model`` when it is a CPU float32 Llama whose projections are plain
        Linears or ``Int8Linear`` (not LoRA, not MoE) and the kernel builds; else None, and
        the engine keeps the PyTorch path."""
        if not isinstance(model, Llama) or model.tok_emb.weight.dtype != torch.float32:
            return None
        for b in model.trf_blocks:
            if not isinstance(b.ff, SwiGLU):
                return None
            qkv, gate_up = _projections(b)
            if not all(_supported(m) for m in [*qkv, b.att.out_proj, *gate_up, b.ff.fc3]):
                return None
            if not (b.norm1.weight.dtype == b.norm2.weight.dtype == torch.float32):
                return None
        kernel = llama_layer_kernel()
        return cls(model, kernel) if kernel is not None else None

    def refresh(self) -> None:
        """Re-read the weights' addresses (after the model's tensors were replaced, e.g. by
        ``load_state_dict(assign=True)``); the engine calls this at the start of each request.
        The tensors are kept referenced, so an address here is never freed memory."""
        self.layers = []
        for b in self.model.trf_blocks:
            qkv, gate_up = _projections(b)
            tensors = [p for m in b.modules() for p in (*m.parameters(recurse=False),
                                                         *m.buffers(recurse=False))]
            self.layers.append((b.norm1.weight, _weights(qkv), len(qkv), _weights([b.att.out_proj]),
                                b.norm2.weight, _weights(gate_up), len(gate_up),
                                _weights([b.ff.fc3]), tensors))

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
        for i, (norm1, qkv, n_qkv, o, norm2, gate_up, n_gu, down, _) in enumerate(self.layers):
            self.kernel(x.data_ptr(), b, c, h, kv, d, inter, self.eps, norm1.data_ptr(), qkv,
                        n_qkv, o, norm2.data_ptr(), gate_up, n_gu, down, cos.data_ptr(),
                        sin.data_ptr(), k0 + i * layer_bytes, v0 + i * layer_bytes,
                        cache.max_len, cache.length, start.data_ptr())
        cache.advance(1)
        return model.out_head(model.final_norm(x))[:, : model.cfg.vocab_size]

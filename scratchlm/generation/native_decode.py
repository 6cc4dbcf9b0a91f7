"""Decode steps of a Llama or GPT in native code: one C call per layer (``nn/csrc/decode.c``).

    ids (B, 1) -> tok_emb (+ pos_emb) -> [llama_layer | gpt_layer] x n_layer
               -> final_norm -> out_head -> (B, V)

A batch-1 decode step reads every weight once, a few milliseconds at memory speed, but in
PyTorch it is also over a thousand small ops of a few microseconds each, which for a 30-layer
model costs about as much again. The C layer does the same arithmetic as ``LlamaBlock``
(RMSNorm, the Q/K/V projections, RoPE, the KV cache write, grouped-query attention over the
row's real slots, the output projection, SwiGLU, both residuals) or GPT's ``TransformerBlock``
(LayerNorm, biases, GELU) in one call, on the same KV cache tensors, so prefill (PyTorch) and
decode (here) mix freely. Weights may be float32
``nn.Linear``, ``Int8Linear`` (separate or fused, ``nn/fuse.py``) or ``GGUFLinear`` (a GGUF
file's own Q8_0/Q4_0/Q4_1/Q4_K/Q6_K blocks). The ``Engine`` uses it for
every one-token step when the model qualifies (``NativeDecoder.create``); its logits are
tested equal to the PyTorch path's.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from scratchlm.models.registry import model_features
from scratchlm.nn.attention import CausalSelfAttention
from scratchlm.nn.feedforward import GELU, FeedForward, SwiGLU
from scratchlm.nn.kv_cache import KVCache
from scratchlm.nn.native import (FORMATS, PANEL_MIN_ROWS, Weight, decode_function,
                                 head_linear, pack_panels, panel_linear)
from scratchlm.nn.gguf_linear import GGUFLinear
from scratchlm.nn.quant import Int8Linear


def _supported(layer: nn.Module) -> bool:
    """A float32 ``nn.Linear``, an ``Int8Linear`` or a ``GGUFLinear`` on CPU with contiguous
    weights."""
    if type(layer) is nn.Linear:
        w, extra = layer.weight, layer.bias
    elif isinstance(layer, Int8Linear):
        if layer.scale.dtype != torch.float32:
            return False
        w, extra = layer.weight_int8, layer.bias
    elif isinstance(layer, GGUFLinear):
        w, extra = layer.blocks, layer.bias
    else:
        return False
    return (w.device.type == "cpu" and w.is_contiguous()
            and (w.dtype == torch.float32 or isinstance(layer, (Int8Linear, GGUFLinear)))
            and (extra is None or extra.dtype == torch.float32))


# The features (``models/registry.model_features``) each C layer computes. A model that uses
# anything else (q/k norms, sliding windows, Gemma's norms, MoE, ...) keeps PyTorch's path.
KERNELS = {
    "llama_layer": frozenset({"rmsnorm", "rope", "swiglu", "biases", "qk_norm"}),
    "gpt_layer": frozenset({"layernorm", "learned_positions", "gelu", "biases"}),
}


def kernel_for(model: nn.Module) -> tuple[str | None, str]:
    """(the C layer that computes ``model``'s features exactly, or None; why not)."""
    try:
        feats = model_features(model)
    except (ValueError, AttributeError):
        return None, f"{type(model).__name__} is not a model of a known family"
    for name, supported in KERNELS.items():
        if feats <= supported and feats & {"rmsnorm", "layernorm"} & supported:
            return name, ""
    closest = min(KERNELS.values(), key=lambda k: len(feats - k))
    return None, "no native layer for: " + ", ".join(sorted(feats - closest))


def _layers(model: nn.Module, block: nn.Module, kernel: str) -> list[list[nn.Module]] | None:
    """The weight groups the C layer reads, in its argument order (each group's outputs side by
    side), or None when the block has something it does not do (MoE, LoRA, other norms)."""
    if kernel == "llama_layer" and type(block.ff) is SwiGLU and block.ff.act == "silu":
        att, ff = block.att, block.ff
        qkv = [att.qkv_proj] if att.qkv_proj is not None else [att.q_proj, att.k_proj, att.v_proj]
        gate_up = [ff.fc12] if ff.fc12 is not None else [ff.fc1, ff.fc2]
        return [qkv, [att.out_proj], gate_up, [ff.fc3]]
    if (kernel == "gpt_layer" and isinstance(block.att, CausalSelfAttention)
            and isinstance(block.ff, FeedForward) and isinstance(block.ff.layers[1], GELU)):
        fc, _, proj = block.ff.layers
        return [[block.att.qkv], [block.att.out_proj], [fc], [proj]]
    return None


def _weights(layers: list[nn.Module]) -> ctypes.Array:
    arr = (Weight * len(layers))()
    for slot, layer in zip(arr, layers):
        if isinstance(layer, GGUFLinear):
            slot.w, slot.scale, slot.fmt = layer.blocks.data_ptr(), None, layer.format_code
        elif isinstance(layer, Int8Linear):
            slot.w, slot.scale = layer.weight_int8.data_ptr(), layer.scale.data_ptr()
            slot.fmt = FORMATS["int8"]
        else:
            slot.w, slot.scale, slot.fmt = layer.weight.data_ptr(), None, FORMATS["f32"]
        slot.bias = layer.bias.data_ptr() if layer.bias is not None else None
        slot.rows = layer.out_features
    return arr


def _norms(block: nn.Module, kernel: str) -> list[torch.Tensor]:
    if kernel == "llama_layer":
        att = block.att
        qk = [att.q_norm.weight, att.k_norm.weight] if att.q_norm is not None else []
        return [block.norm1.weight, block.norm2.weight, *qk]
    return [block.norm1.scale, block.norm1.shift, block.norm2.scale, block.norm2.shift]


class NativeDecoder:
    def __init__(self, model: nn.Module, kernel, name: str):
        self.model, self.kernel, self.name = model, kernel, name
        self.llama = name == "llama_layer"
        cfg = model.cfg
        if self.llama:
            self.eps = float(cfg.norm_eps)
            self.dims = (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size)
        else:
            self.eps = float(model.trf_blocks[0].norm1.eps)
            hidden = model.trf_blocks[0].ff.layers[0].out_features
            self.dims = (cfg.n_embd, cfg.n_head, cfg.head_dim, hidden)
        # id(weight) -> (weight, its version, its panels), for the weights of the last batch
        self._packs: dict[int, tuple[torch.Tensor, int | None, torch.Tensor]] = {}
        self.refresh()

    @classmethod
    def create(cls, model: nn.Module) -> "NativeDecoder | None":
        """A decoder for ``model`` when a C layer computes all its features (``kernel_for``),
        it is on the CPU in float32, its projections are plain Linears or ``Int8Linear`` (not
        LoRA) and the kernel builds; else None, and the engine keeps the PyTorch path."""
        name, _ = kernel_for(model)
        emb = getattr(model.tok_emb, "weight", None)  # a GGUFEmbedding gives float32 rows
        if name is None or (emb is not None and emb.dtype != torch.float32):
            return None
        if any(type(p.data) is not torch.Tensor for p in model.parameters()):
            return None  # sharded (FSDP DTensor) parameters: the PyTorch layers gather them
        for b in model.trf_blocks:
            groups = _layers(model, b, name)
            if groups is None or not all(_supported(m) for g in groups for m in g):
                return None
            if not all(t.dtype == torch.float32 and t.device.type == "cpu"
                       for t in _norms(b, name)):
                return None
        kernel = decode_function(name)
        return cls(model, kernel, name) if kernel is not None else None

    def refresh(self) -> None:
        """Re-read the weights' addresses (after the model's tensors were replaced, e.g. by
        ``load_state_dict(assign=True)``); the engine calls this at the start of each request.
        The tensors are kept referenced, so an address here is never freed memory."""
        self.layers = []
        self._panel_layers = None  # built again, from current weights, by the next batch
        for b in self.model.trf_blocks:
            groups = _layers(self.model, b, self.name)
            tensors = [p for m in b.modules() for p in (*m.parameters(recurse=False),
                                                         *m.buffers(recurse=False))]
            self.layers.append((_norms(b, self.name), [_weights(g) for g in groups],
                                [len(g) for g in groups], tensors))

    def _packed(self, weight: torch.Tensor, before: dict) -> torch.Tensor:
        """``weight`` as float32 panels (``nn/native.pack_panels``), taken from ``before`` (the
        last build's) unless the tensor or its contents changed (a GRPO rollout's weights are
        merged anew each time)."""
        try:
            version = weight._version
        except RuntimeError:  # an inference tensor keeps no version: packed at every refresh
            version = None
        hit = before.get(id(weight))
        if hit is None or hit[0] is not weight or version is None or hit[1] != version:
            hit = (weight, version, pack_panels(weight))
        self._packs[id(weight)] = hit
        return hit[2]

    def _batch_layers(self) -> list:
        """``self.layers`` with each float32 ``nn.Linear`` read from its panels: what steps of
        ``PANEL_MIN_ROWS`` rows or more multiply (csrc/decode.c's FMT_F32_PANELS). They cost a
        second copy of those weights, held while the decoder lives."""
        if self._panel_layers is None:
            # only this build's weights stay packed: replaced tensors are let go
            before, self._packs = self._packs, {}
            head = self.model.out_head
            self._head_panels = (self._packed(head.weight, before) if type(head) is nn.Linear
                                 and head.weight.dtype == torch.float32 else None)
            self._panel_layers = []
            for b, (norms, _, counts, tensors) in zip(self.model.trf_blocks, self.layers):
                groups = []
                for g in _layers(self.model, b, self.name):
                    arr = _weights(g)
                    for slot, layer in zip(arr, g):
                        if type(layer) is nn.Linear:
                            slot.w, slot.fmt = self._packed(layer.weight, before).data_ptr(), \
                                FORMATS["f32_panels"]
                    groups.append(arr)
                self._panel_layers.append((norms, groups, counts, tensors))
        return self._panel_layers

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        head = self.model.out_head
        if x.shape[0] >= PANEL_MIN_ROWS and self._batch_layers() and self._head_panels is not None:
            return panel_linear(x, self._head_panels, head.bias, head.out_features)
        return head_linear(head, x)

    def logits(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """(B, 1) new token ids -> (B, vocab_size) logits, appending to ``cache``."""
        model = self.model
        b = idx.shape[0]
        if cache.length + 1 > min(cache.max_len, model.cfg.context_length):
            raise ValueError(f"KV cache full: {cache.length + 1} slots needed, "
                             f"{cache.max_len} allocated")
        cache.reserve(cache.length + 1)  # before the storage's address is taken
        pos = cache.positions(1)[:, 0]  # (B,)
        x = model.tok_emb(idx[:, 0])  # (B, C), updated in place by every layer
        if self.llama:
            cos, sin = model.rope(cache.length + 1, idx.device)
            cos, sin = cos[pos].contiguous(), sin[pos].contiguous()  # (B, D)
        else:
            x = x + model.pos_emb(pos)
        x = x.contiguous()
        start = cache.pad.to(torch.int64).contiguous()
        layer_bytes = cache.k.stride(0) * cache.k.element_size()  # also for a view of rows
        k0, v0 = cache.k.data_ptr(), cache.v.data_ptr()
        layers = self._batch_layers() if b >= PANEL_MIN_ROWS else self.layers
        # the same for every layer (cache.capacity is a property: read once)
        slots, x_ptr, start_ptr = (cache.capacity, cache.length), x.data_ptr(), start.data_ptr()
        rot = (cos.data_ptr(), sin.data_ptr()) if self.llama else ()
        for i, (norms, (qkv, o, up, down), (n_qkv, _, n_up, _), _) in enumerate(layers):
            kv = (k0 + i * layer_bytes, v0 + i * layer_bytes, *slots, start_ptr)
            if self.llama:
                c, h, n_kv, d, inter = self.dims
                qk = [t.data_ptr() for t in norms[2:]] or [None, None]
                self.kernel(x_ptr, b, c, h, n_kv, d, inter, self.eps, norms[0].data_ptr(),
                            qkv, n_qkv, o, norms[1].data_ptr(), up, n_up, down, *rot, *kv, *qk)
            else:
                c, h, d, inter = self.dims
                self.kernel(x_ptr, b, c, h, d, inter, self.eps,
                            *[t.data_ptr() for t in norms[:2]], qkv, o,
                            *[t.data_ptr() for t in norms[2:]], up, down, *kv)
        cache.advance(1)
        return self._head(model.final_norm(x))[:, : model.cfg.vocab_size]

"""Hugging Face GPT-2 layout <-> our GPT.

HF's GPT-2 stores its projections as ``Conv1D`` weights of shape (in, out), the transpose of
``nn.Linear``'s (out, in). Its fused ``c_attn`` holds [query | key | value] along the output
dimension, head-major inside each part, which is exactly our fused ``qkv`` layout, so one
transpose maps it. Checkpoint keys may or may not carry the ``transformer.`` prefix.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from scratchlm.models.gpt import GPTConfig

# HF suffix (inside transformer.h.{i}.) -> (our suffix inside trf_blocks.{i}., transpose?)
_BLOCK = {
    "ln_1.weight": ("norm1.scale", False),
    "ln_1.bias": ("norm1.shift", False),
    "attn.c_attn.weight": ("att.qkv.weight", True),
    "attn.c_attn.bias": ("att.qkv.bias", False),
    "attn.c_proj.weight": ("att.out_proj.weight", True),
    "attn.c_proj.bias": ("att.out_proj.bias", False),
    "ln_2.weight": ("norm2.scale", False),
    "ln_2.bias": ("norm2.shift", False),
    "mlp.c_fc.weight": ("ff.layers.0.weight", True),
    "mlp.c_fc.bias": ("ff.layers.0.bias", False),
    "mlp.c_proj.weight": ("ff.layers.2.weight", True),
    "mlp.c_proj.bias": ("ff.layers.2.bias", False),
}
_TOP = {
    "wte.weight": "tok_emb.weight",
    "wpe.weight": "pos_emb.weight",
    "ln_f.weight": "final_norm.scale",
    "ln_f.bias": "final_norm.shift",
}
# Buffers some GPT-2 checkpoints carry (causal masks); not weights.
_IGNORED = ("attn.bias", "attn.masked_bias")


def config_from_hf(hf: Mapping) -> GPTConfig:
    """Our config from a GPT-2 ``config.json`` dict."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"not a GPT-2 config (model_type={hf.get('model_type')!r})")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported activation {hf['activation_function']!r}")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError("only layer_norm_epsilon=1e-5 (GPT-2's) is supported")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_embd=hf["n_embd"],
        n_head=hf["n_head"],
        n_layer=hf["n_layer"],
        qkv_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def config_to_hf(cfg: GPTConfig) -> dict:
    """A GPT-2 ``config.json`` dict for ``cfg`` (transformers' ``GPT2Config`` fields)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
    }


def hf_key_to_ours(key: str) -> tuple[str | None, bool]:
    """Map one HF key to (our key, needs transpose); (None, False) for ignored buffers."""
    k = key.removeprefix("transformer.")
    if k == "lm_head.weight":
        return "out_head.weight", False
    if k in _TOP:
        return _TOP[k], False
    if k.startswith("h."):
        _, layer, rest = k.split(".", 2)
        if rest in _IGNORED:
            return None, False
        if rest in _BLOCK:
            ours, transpose = _BLOCK[rest]
            return f"trf_blocks.{layer}.{ours}", transpose
    raise KeyError(key)


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> HF ``GPT2LMHeadModel`` keys (``transformer.`` prefix, Conv1D layout)."""
    inverse = {ours: (hf, t) for hf, (ours, t) in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    v = cfg.vocab_size
    for key, tensor in state.items():
        if key.startswith("trf_blocks."):
            _, layer, rest = key.split(".", 2)
            hf, transpose = inverse[rest]
            out[f"transformer.h.{layer}.{hf}"] = (tensor.T if transpose else tensor).contiguous()
        elif key == "out_head.weight":
            if not cfg.tie_embeddings:
                out["lm_head.weight"] = tensor[:v].contiguous()
        else:
            hf = {ours: hf for hf, ours in _TOP.items()}[key]
            out[f"transformer.{hf}"] = (tensor[:v] if key == "tok_emb.weight" else tensor).contiguous()
    if not cfg.qkv_bias:  # HF's GPT-2 always has a c_attn bias
        for i in range(cfg.n_layer):
            out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(3 * cfg.n_embd)
    return out


MODEL_TYPES = {"gpt2": (GPTConfig, "GPT2LMHeadModel")}


def hf_to_ours(key: str, tensor: torch.Tensor, cfg):
    """(our key, tensor) pairs for one HF tensor (the registry's converter protocol)."""
    ours, transpose = hf_key_to_ours(key)
    yield ours, (tensor.T if transpose else tensor)

"""Hugging Face ``Gemma3ForCausalLM`` (model_type ``gemma3_text``: Gemma 3 270M, 1B and the
text part of the larger ones) <-> our Gemma3. Names only: both store the norms' weight w of the
``1 + w`` scale, and both rotate halves for RoPE."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from scratchlm.models.convert.hf_blocks import (ATTENTION, GATED_MLP, TOP, block_key_to_ours,
                                                block_state_to_hf, layer_pattern, layer_types,
                                                shape_to_hf)
from scratchlm.models.gemma3 import Gemma3Config

_BLOCK = {
    **ATTENTION,
    "input_layernorm.weight": "norm1.weight",
    "post_attention_layernorm.weight": "post_att_norm.weight",
    "pre_feedforward_layernorm.weight": "norm2.weight",
    "post_feedforward_layernorm.weight": "post_ff_norm.weight",
    **GATED_MLP,
}
_TOP = TOP
MODEL_TYPES = {"gemma3_text": (Gemma3Config, "Gemma3ForCausalLM")}


def config_from_hf(hf: Mapping) -> Gemma3Config:
    if hf.get("model_type") == "gemma3":
        raise ValueError("a multimodal Gemma 3 checkpoint (model_type 'gemma3'): only the "
                         "text models (model_type 'gemma3_text') are supported")
    if hf.get("model_type") != "gemma3_text":
        raise ValueError(f"not a Gemma 3 text config (model_type={hf.get('model_type')!r})")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(key) is not None:
            raise ValueError(f"{key} is not supported (Gemma 3 has none)")
    if hf.get("attention_bias") or hf.get("use_bidirectional_attention"):
        raise ValueError("attention_bias / use_bidirectional_attention are not supported")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"unsupported activation {hf['hidden_activation']!r}")
    n_layer = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % hf.get("sliding_window_pattern", 6) else "full_attention"
        for i in range(n_layer)]
    rope = hf.get("rope_parameters") or {}
    full = rope.get("full_attention") or {}
    local = rope.get("sliding_attention") or {}
    scaling = hf.get("rope_scaling") or (full if full.get("rope_type", "default") != "default"
                                         else None)
    factor = 1.0
    if scaling:
        if scaling.get("rope_type", scaling.get("type")) != "linear":
            raise ValueError(f"unsupported rope scaling {scaling!r}")
        factor = float(scaling["factor"])
    return Gemma3Config(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 32768),
        n_embd=hf["hidden_size"], n_layer=n_layer, n_head=hf["num_attention_heads"],
        n_kv_head=hf["num_key_value_heads"], head_dim=hf["head_dim"],
        intermediate_size=hf["intermediate_size"],
        rope_base=float(hf.get("rope_theta", full.get("rope_theta", 1_000_000.0))),
        rope_local_base=float(hf.get("rope_local_base_freq", local.get("rope_theta", 10_000.0))),
        rope_linear_factor=factor, norm_eps=hf.get("rms_norm_eps", 1e-6),
        query_pre_attn_scalar=int(hf.get("query_pre_attn_scalar", 256)),
        sliding_window=hf.get("sliding_window") or 0, sliding_window_pattern=layer_pattern(types),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def config_to_hf(cfg: Gemma3Config) -> dict:
    if cfg.moe.num_experts:
        raise ValueError("a Gemma 3 with MoE layers has no HF layout")
    full = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_linear_factor != 1.0:
        full = {"rope_type": "linear", "factor": cfg.rope_linear_factor,
                "rope_theta": cfg.rope_base}
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        **shape_to_hf(cfg), "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
        "sliding_window": cfg.sliding_window or None,
        "layer_types": layer_types(cfg),
        "rope_parameters": {"full_attention": full,
                            "sliding_attention": {"rope_type": "default",
                                                  "rope_theta": cfg.rope_local_base}},
        "attention_bias": False,
        "final_logit_softcapping": None, "attn_logit_softcapping": None,
    }


def hf_to_ours(key: str, tensor: torch.Tensor, cfg) -> Iterator[tuple[str | None, torch.Tensor]]:
    yield from block_key_to_ours(key, tensor, _TOP, _BLOCK)


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    return block_state_to_hf(state, cfg, _TOP, _BLOCK)

"""Hugging Face ``Olmo3ForCausalLM`` (model_type ``olmo3``) <-> our Olmo3: names, and YaRN's
settings between HF's ``rope_parameters`` and our ``rope_scaling``. Both rotate halves for
RoPE and store plain RMSNorm weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from scratchlm.models.convert.hf_blocks import (ATTENTION, GATED_MLP, TOP, block_key_to_ours,
                                                block_state_to_hf, layer_pattern, layer_types,
                                                shape_to_hf, yarn_from_hf, yarn_to_hf)
from scratchlm.models.olmo3 import Olmo3Config

_BLOCK = {
    **ATTENTION,
    "post_attention_layernorm.weight": "att_out_norm.weight",
    "post_feedforward_layernorm.weight": "ff_out_norm.weight",
    **GATED_MLP,
}
_TOP = TOP
MODEL_TYPES = {"olmo3": (Olmo3Config, "Olmo3ForCausalLM")}
def config_from_hf(hf: Mapping) -> Olmo3Config:
    if hf.get("model_type") != "olmo3":
        raise ValueError(f"not an OLMo 3 config (model_type={hf.get('model_type')!r})")
    if hf.get("attention_bias"):
        raise ValueError("attention_bias is not supported (OLMo 3 has none)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {hf['hidden_act']!r}")
    n_layer = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n_layer)]
    rope = hf.get("rope_parameters") or {}
    full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
    base = float(full.get("rope_theta", hf.get("rope_theta", 500_000.0)))
    if float(local.get("rope_theta", base)) != base or yarn_from_hf(local, "OLMo 3"):
        raise ValueError("OLMo 3's local layers use plain RoPE at the global layers' base")
    return Olmo3Config(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 65536),
        n_embd=hf["hidden_size"], n_layer=n_layer, n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"],
        rope_base=base, rope_scaling=yarn_from_hf(hf.get("rope_scaling") or full, "OLMo 3"),
        norm_eps=hf.get("rms_norm_eps", 1e-6), sliding_window=hf.get("sliding_window") or 0,
        # no window: every layer global (OLMo 2's shape), whatever the list says
        sliding_window_pattern=layer_pattern(types) if hf.get("sliding_window") else 0,
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def config_to_hf(cfg: Olmo3Config) -> dict:
    if cfg.moe.num_experts:
        raise ValueError("an OLMo 3 with MoE layers has no HF layout")
    full = {"rope_theta": cfg.rope_base, **yarn_to_hf(cfg.rope_scaling)}
    return {
        "architectures": ["Olmo3ForCausalLM"], "model_type": "olmo3",
        **shape_to_hf(cfg), "hidden_act": "silu",
        "sliding_window": cfg.sliding_window or None,
        "layer_types": layer_types(cfg),
        "rope_parameters": {"full_attention": full,
                            "sliding_attention": {"rope_type": "default",
                                                  "rope_theta": cfg.rope_base}},
        "attention_bias": False,
    }


def hf_to_ours(key: str, tensor: torch.Tensor, cfg) -> Iterator[tuple[str | None, torch.Tensor]]:
    yield from block_key_to_ours(key, tensor, _TOP, _BLOCK)


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    return block_state_to_hf(state, cfg, _TOP, _BLOCK)

"""Hugging Face Qwen3.5 <-> our Qwen35: ``Qwen3_5ForCausalLM`` (model_type ``qwen3_5_text``)
and ``Qwen3_5MoeForCausalLM`` (``qwen3_5_moe_text``) both ways, and the text part of the
published vision-language checkpoints (``Qwen3_5ForConditionalGeneration``, model_type
``qwen3_5``, and its MoE twin: the settings under ``text_config``, the weights under
``model.language_model.``; the vision tower and the multi-token-prediction head are left
out). Names only: both sides store ``nn.Linear``'s
(out, in) layout, the convolution as (channels, 1, kernel), and the "rotate half" RoPE."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from scratchlm.models.convert import hf_llama
from scratchlm.models.convert.hf_blocks import (ATTENTION, GATED_MLP, TOP, block_key_to_ours,
                                                block_state_to_hf, layer_pattern, shape_to_hf)
from scratchlm.models.qwen3_5 import Qwen35Config

_BLOCK = {
    "input_layernorm.weight": "norm1.weight",
    **ATTENTION,
    "linear_attn.in_proj_qkv.weight": "lin.qkv_proj.weight",
    "linear_attn.in_proj_z.weight": "lin.z_proj.weight",
    "linear_attn.in_proj_b.weight": "lin.b_proj.weight",
    "linear_attn.in_proj_a.weight": "lin.a_proj.weight",
    "linear_attn.conv1d.weight": "lin.conv.weight",
    "linear_attn.dt_bias": "lin.dt_bias",
    "linear_attn.A_log": "lin.A_log",
    "linear_attn.norm.weight": "lin.norm.weight",
    "linear_attn.out_proj.weight": "lin.out_proj.weight",
    "post_attention_layernorm.weight": "norm2.weight",
    **GATED_MLP,
    "mlp.gate.weight": "ff.router.weight",
    "mlp.shared_expert.gate_proj.weight": "ff.shared_expert.fc1.weight",
    "mlp.shared_expert.up_proj.weight": "ff.shared_expert.fc2.weight",
    "mlp.shared_expert.down_proj.weight": "ff.shared_expert.fc3.weight",
    "mlp.shared_expert_gate.weight": "ff.shared_expert_gate.weight",
}
_TOP = TOP
MODEL_TYPES = {"qwen3_5_text": (Qwen35Config, "Qwen3_5ForCausalLM"),
               "qwen3_5": (Qwen35Config, "Qwen3_5ForConditionalGeneration"),
               "qwen3_5_moe_text": (Qwen35Config, "Qwen3_5MoeForCausalLM"),
               "qwen3_5_moe": (Qwen35Config, "Qwen3_5MoeForConditionalGeneration")}
_TEXT = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
_VISION_LANGUAGE = "model.language_model."  # the text model's prefix in the published files
_LEFT_OUT = ("model.visual.", "mtp.")  # the vision tower, the multi-token-prediction head


def config_from_hf(hf: Mapping) -> Qwen35Config:
    kind = hf.get("model_type")
    if kind in _TEXT:  # a vision-language config: its text model's
        text = hf.get("text_config") or {}
        hf = {**text, "model_type": _TEXT[kind],
              "tie_word_embeddings": hf.get("tie_word_embeddings",
                                            text.get("tie_word_embeddings", False))}
    elif kind not in MODEL_TYPES:
        raise ValueError(f"not a Qwen3.5 config (model_type={kind!r})")
    moe = hf["model_type"] == "qwen3_5_moe_text"
    if hf.get("attention_bias"):
        raise ValueError("attention_bias is not supported (Qwen3.5 has none)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {hf['hidden_act']!r}")
    if moe and (hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1):
        raise ValueError("Qwen3.5-MoE with dense layers (mlp_only_layers, decoder_sparse_step) "
                         "is not supported")
    if hf.get("attn_output_gate") is False:
        raise ValueError("attn_output_gate=false is not supported (every Qwen3.5 has the gate)")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"unsupported rope scaling {dict(rope)!r}")
    n_layer = hf["num_hidden_layers"]
    interval = hf.get("full_attention_interval", 4)
    if hf.get("layer_types") is not None:  # no full-attention layer: an interval past the end
        interval = layer_pattern(list(hf["layer_types"]), "linear_attention") or n_layer + 1
    return Qwen35Config(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 262144),
        n_embd=hf["hidden_size"], n_layer=n_layer, n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim", 256),
        intermediate_size=hf.get("intermediate_size") or hf["moe_intermediate_size"],
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10_000_000.0))),
        partial_rotary_factor=float(rope.get("partial_rotary_factor",
                                             hf.get("partial_rotary_factor", 0.25))),
        norm_eps=hf.get("rms_norm_eps", 1e-6), full_attention_interval=interval,
        linear_key_heads=hf.get("linear_num_key_heads", 16),
        linear_value_heads=hf.get("linear_num_value_heads", 32),
        linear_key_dim=hf.get("linear_key_head_dim", 128),
        linear_value_dim=hf.get("linear_value_head_dim", 128),
        linear_conv_kernel=hf.get("linear_conv_kernel_dim", 4),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        moe={"num_experts": hf["num_experts"], "top_k": hf["num_experts_per_tok"],
             "intermediate_size": hf["moe_intermediate_size"],
             "shared_expert_size": hf["shared_expert_intermediate_size"],
             "norm_topk_prob": True, "aux_loss_coef": hf.get("router_aux_loss_coef", 0.001)}
        if moe else None,
    )


def config_to_hf(cfg: Qwen35Config) -> dict:
    moe = cfg.moe
    if moe.num_experts and (not moe.shared_expert_size or not moe.norm_topk_prob
                            or moe.router_bias or moe.capacity_factor):
        raise ValueError("Qwen3.5-MoE's HF layout has a shared expert, renormalised top-k "
                         "gates, no router bias and no expert capacity")
    kind = "qwen3_5_moe_text" if moe.num_experts else "qwen3_5_text"
    experts = {} if not moe.num_experts else {
        "num_experts": moe.num_experts, "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.intermediate_size or cfg.intermediate_size,
        "shared_expert_intermediate_size": moe.shared_expert_size,
        "router_aux_loss_coef": moe.aux_loss_coef}
    return {
        "architectures": [MODEL_TYPES[kind][1]], "model_type": kind, **experts,
        **shape_to_hf(cfg), "hidden_act": "silu", "attention_bias": False,
        "layer_types": ["linear_attention" if lin else "full_attention"
                        for lin in cfg.linear_layers],
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base,
                            "partial_rotary_factor": cfg.partial_rotary_factor},
        "linear_num_key_heads": cfg.linear_key_heads,
        "linear_num_value_heads": cfg.linear_value_heads,
        "linear_key_head_dim": cfg.linear_key_dim,
        "linear_value_head_dim": cfg.linear_value_dim,
        "linear_conv_kernel_dim": cfg.linear_conv_kernel,
    }


def hf_to_ours(key: str, tensor: torch.Tensor, cfg) -> Iterator[tuple[str | None, torch.Tensor]]:
    if key.startswith(_LEFT_OUT):
        yield None, tensor
        return
    if key.startswith(_VISION_LANGUAGE):
        key = "model." + key.removeprefix(_VISION_LANGUAGE)
    if ".mlp.experts." in key:  # per expert or stacked, as Qwen3-MoE's (hf_llama)
        yield from hf_llama.hf_to_ours(key, tensor, cfg)
        return
    yield from block_key_to_ours(key, tensor, _TOP, _BLOCK)


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """HF's names; routed experts saved one by one (transformers stacks them on load)."""
    experts = {k: v for k, v in state.items() if ".ff.experts." in k}
    out = block_state_to_hf({k: v for k, v in state.items() if k not in experts}, cfg, _TOP,
                            _BLOCK)
    return {**out, **hf_llama.state_dict_to_hf(experts, cfg)}

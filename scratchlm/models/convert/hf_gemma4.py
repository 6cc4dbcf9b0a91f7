"""Hugging Face Gemma 4 <-> our Gemma4: ``Gemma4ForCausalLM`` (model_type ``gemma4_text``) both
ways, and the text part of the published multimodal checkpoints
(``Gemma4ForConditionalGeneration``, model_type ``gemma4``: the settings under ``text_config``,
the weights under ``model.language_model.``; the vision and audio towers are left out).

Names only, except the mixture's experts: HF stacks them, ``experts.gate_up_proj`` (E, 2I, C)
and ``experts.down_proj`` (E, C, I), and we hold one GeGLU per expert. Both store the norms'
plain ``w`` and rotate halves for RoPE. The global layers' head size and key/value heads are
HF's ``per_layer_config`` (as transformers saves it) or ``global_head_dim`` /
``num_global_key_value_heads`` (as the published configs give them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from scratchlm.models.convert.hf_blocks import (ATTENTION, GATED_MLP, block_key_to_ours,
                                                block_state_to_hf, layer_pattern, shape_to_hf,
                                                split_stacked_experts)
from scratchlm.models.gemma4 import Gemma4Config

_BLOCK = {
    "input_layernorm.weight": "norm1.weight",
    **ATTENTION,
    "post_attention_layernorm.weight": "post_att_norm.weight",
    "pre_feedforward_layernorm.weight": "norm2.weight",
    **GATED_MLP,
    "post_feedforward_layernorm.weight": "post_ff_norm.weight",
    "pre_feedforward_layernorm_2.weight": "moe_norm.weight",
    "post_feedforward_layernorm_1.weight": "post_ff_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ff_norm_2.weight",
    "router.proj.weight": "moe.router.weight",
    "router.scale": "moe.router_scale",
    "router.per_expert_scale": "moe.expert_scale",
    "per_layer_input_gate.weight": "ple_gate.weight",
    "per_layer_projection.weight": "ple_out.weight",
    "post_per_layer_input_norm.weight": "ple_norm.weight",
    "layer_scalar": "layer_scalar",
}
_TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight",
        "lm_head.weight": "out_head.weight",
        "model.embed_tokens_per_layer.weight": "ple_emb.weight",
        "model.per_layer_model_projection.weight": "ple_proj.weight",
        "model.per_layer_projection_norm.weight": "ple_norm.weight"}
MODEL_TYPES = {"gemma4_text": (Gemma4Config, "Gemma4ForCausalLM"),
               "gemma4": (Gemma4Config, "Gemma4ForConditionalGeneration")}
_MULTIMODAL = "model.language_model."  # the text model's prefix in the published files
_LEFT_OUT = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.",
             "model.embed_audio.")


def _global_shape(hf: Mapping, types: list[str]) -> tuple[int, int]:
    """(global head size, global key/value heads; 0: num_key_value_heads). A layer that
    ``per_layer_config`` leaves out (or a key it leaves out) has the model-wide value, and
    transformers leaves out what equals it."""
    if "per_layer_config" not in hf:  # the published files' keys, with transformers' defaults
        kv = hf.get("num_global_key_value_heads") if hf.get("attention_k_eq_v") else None
        return hf.get("global_head_dim", 512), kv or 0
    per_layer = {int(k): v for k, v in (hf["per_layer_config"] or {}).items()}
    base = (hf.get("head_dim", 256), hf["num_key_value_heads"])

    def shape(i: int) -> tuple[int, int]:
        over = per_layer.get(i, {})
        return over.get("head_dim", base[0]), over.get("num_key_value_heads", base[1])

    local = {shape(i) for i, t in enumerate(types) if t != "full_attention"}
    full = {shape(i) for i, t in enumerate(types) if t == "full_attention"}
    if local - {base} or len(full) > 1:
        raise ValueError("per_layer_config must give the local layers the model's shape and "
                         f"every global layer one shape, got {hf['per_layer_config']}")
    head_dim, kv = full.pop() if full else base
    return head_dim, kv


def config_from_hf(hf: Mapping) -> Gemma4Config:
    kind = hf.get("model_type")
    if kind == "gemma4":  # a multimodal config: its text model's
        text = hf.get("text_config") or {}
        hf = {**text, "model_type": "gemma4_text",
              "tie_word_embeddings": hf.get("tie_word_embeddings",
                                            text.get("tie_word_embeddings", True))}
    elif kind != "gemma4_text":
        raise ValueError(f"not a Gemma 4 config (model_type={kind!r})")
    if hf.get("attention_bias"):
        raise ValueError("attention_bias is not supported (Gemma 4 has none)")
    if hf.get("use_bidirectional_attention") == "all":
        raise ValueError("use_bidirectional_attention='all' (an encoder) is not supported")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"unsupported activation {hf['hidden_activation']!r}")
    n_layer = hf["num_hidden_layers"]
    types = list(hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layer)])
    rope = hf.get("rope_parameters") or {}
    local, full = rope.get("sliding_attention") or {}, rope.get("full_attention") or {}
    if (local.get("rope_type", "default") != "default"
            or local.get("partial_rotary_factor", 1.0) != 1.0):
        raise ValueError(f"unsupported rope scaling on local layers {dict(local)!r}")
    if full.get("rope_type", "proportional") != "proportional" or full.get("factor", 1.0) != 1.0:
        raise ValueError(f"unsupported rope scaling on global layers {dict(full)!r}")
    pattern = layer_pattern(types, last=True)  # the last layer global whatever the list
    head_dim, global_kv = _global_shape(hf, types)
    moe = None
    if hf.get("enable_moe_block"):
        moe = {"num_experts": hf["num_experts"], "top_k": hf["top_k_experts"],
               "intermediate_size": hf["moe_intermediate_size"], "norm_topk_prob": True}
    return Gemma4Config(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 131072),
        n_embd=hf["hidden_size"], n_layer=n_layer, n_head=hf["num_attention_heads"],
        n_kv_head=hf["num_key_value_heads"], head_dim=hf.get("head_dim", 256),
        global_head_dim=head_dim, n_global_kv_head=global_kv,
        intermediate_size=hf["intermediate_size"],
        rope_base=float(full.get("rope_theta", 1_000_000.0)),
        rope_local_base=float(local.get("rope_theta", 10_000.0)),
        global_rotary_factor=float(full.get("partial_rotary_factor", 0.25)),
        norm_eps=hf.get("rms_norm_eps", 1e-6), sliding_window=hf.get("sliding_window") or 0,
        sliding_window_pattern=pattern,
        final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
        k_eq_v=bool(hf.get("attention_k_eq_v", False)),
        kv_shared_layers=hf.get("num_kv_shared_layers") or 0,
        double_wide_mlp=bool(hf.get("use_double_wide_mlp", False)),
        ple_dim=hf.get("hidden_size_per_layer_input") or 0,
        ple_vocab_size=hf.get("vocab_size_per_layer_input") or hf["vocab_size"],
        tie_embeddings=hf.get("tie_word_embeddings", True), moe=moe,
    )


def config_to_hf(cfg: Gemma4Config) -> dict:
    moe = cfg.moe
    if moe.num_experts and not moe.norm_topk_prob:
        raise ValueError("Gemma 4's HF layout renormalises the top-k gates (moe.norm_topk_prob)")
    types = ["sliding_attention" if w else "full_attention" for w in cfg.windows]
    experts = {"enable_moe_block": bool(moe.num_experts)}
    if moe.num_experts:
        experts.update(num_experts=moe.num_experts, top_k_experts=moe.top_k,
                       moe_intermediate_size=moe.intermediate_size or cfg.intermediate_size)
    return {
        "architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text",
        **shape_to_hf(cfg), **experts, "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": cfg.sliding_window, "layer_types": types,
        "per_layer_config": {str(i): {"head_dim": cfg.global_head_dim,
                                      "num_key_value_heads": cfg.global_kv_heads}
                             for i, t in enumerate(types) if t == "full_attention"},
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "rope_theta": cfg.rope_base,
                               "partial_rotary_factor": cfg.global_rotary_factor},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_base}},
        "final_logit_softcapping": cfg.final_logit_softcap or None,
        "attention_bias": False, "attention_k_eq_v": cfg.k_eq_v,
        "num_kv_shared_layers": cfg.kv_shared_layers, "use_double_wide_mlp": cfg.double_wide_mlp,
        "hidden_size_per_layer_input": cfg.ple_dim,
        "vocab_size_per_layer_input": cfg.ple_vocab_size,
    }


def hf_to_ours(key: str, tensor: torch.Tensor, cfg) -> Iterator[tuple[str | None, torch.Tensor]]:
    if key.startswith(_LEFT_OUT):
        yield None, tensor
        return
    if key.startswith(_MULTIMODAL):
        key = "model." + key.removeprefix(_MULTIMODAL)
    if key.startswith("model.layers.") and key.endswith((".experts.gate_up_proj",
                                                        ".experts.down_proj")):
        yield from split_stacked_experts(key, tensor, f"trf_blocks.{key.split('.')[2]}.moe.experts")
        return
    yield from block_key_to_ours(key, tensor, _TOP, _BLOCK)


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """HF's names; each layer's experts stacked as transformers holds them."""
    experts = {k: v for k, v in state.items() if ".moe.experts." in k}
    out = block_state_to_hf({k: v for k, v in state.items() if k not in experts}, cfg, _TOP,
                            _BLOCK)
    for i in range(cfg.n_layer if experts else 0):
        pre = f"trf_blocks.{i}.moe.experts"
        n = cfg.moe.num_experts
        out[f"model.layers.{i}.experts.gate_up_proj"] = torch.stack([
            torch.cat([state[f"{pre}.{e}.fc1.weight"], state[f"{pre}.{e}.fc2.weight"]])
            for e in range(n)]).contiguous()
        out[f"model.layers.{i}.experts.down_proj"] = torch.stack([
            state[f"{pre}.{e}.fc3.weight"] for e in range(n)]).contiguous()
    return out

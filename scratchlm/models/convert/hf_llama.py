"""Hugging Face ``LlamaForCausalLM`` layout <-> our Llama (names only; no transposes, since
both use ``nn.Linear``'s (out, in) layout and the same "rotate half" RoPE)."""

from __future__ import annotations

from collections.abc import Mapping

from scratchlm.models.llama import LlamaConfig

_BLOCK = {
    "input_layernorm.weight": "norm1.weight",
    "self_attn.q_proj.weight": "att.q_proj.weight",
    "self_attn.k_proj.weight": "att.k_proj.weight",
    "self_attn.v_proj.weight": "att.v_proj.weight",
    "self_attn.q_proj.bias": "att.q_proj.bias",
    "self_attn.k_proj.bias": "att.k_proj.bias",
    "self_attn.v_proj.bias": "att.v_proj.bias",
    "self_attn.o_proj.weight": "att.out_proj.weight",
    "post_attention_layernorm.weight": "norm2.weight",
    "mlp.gate_proj.weight": "ff.fc1.weight",
    "mlp.up_proj.weight": "ff.fc2.weight",
    "mlp.down_proj.weight": "ff.fc3.weight",
}
_TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight",
        "lm_head.weight": "out_head.weight"}


def config_from_hf(hf: Mapping) -> LlamaConfig:
    if hf.get("model_type") not in ("llama", None):
        raise ValueError(f"not a Llama config (model_type={hf.get('model_type')!r})")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias", False):
        raise ValueError("only SiLU feed-forwards without bias are supported")
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 keeps RoPE settings here
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type") == "llama3" else None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in ("llama3", "default"):
        raise ValueError(f"unsupported rope scaling {scaling!r}")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("max_position_embeddings", 2048),
        n_embd=hf["hidden_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        head_dim=hf.get("head_dim"),
        rope_base=float(theta),
        rope_scaling=None if not scaling else {
            "factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
            "high_freq_factor": scaling["high_freq_factor"],
            "original_context_length": scaling["original_max_position_embeddings"]},
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        qkv_bias=hf.get("attention_bias", False),
    )


def hf_key_to_ours(key: str) -> str | None:
    if key in _TOP:
        return _TOP[key]
    if key.startswith("model.layers."):
        _, _, layer, rest = key.split(".", 3)
        if rest.endswith("rotary_emb.inv_freq"):
            return None
        if rest in _BLOCK:
            return f"trf_blocks.{layer}.{_BLOCK[rest]}"
    raise KeyError(key)

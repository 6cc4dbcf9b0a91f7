"""Hugging Face Llama-layout checkpoints <-> our Llama: ``LlamaForCausalLM``,
``Qwen3ForCausalLM`` and ``Qwen3MoeForCausalLM`` (names only; no transposes, since both sides
use ``nn.Linear``'s (out, in) layout and the same "rotate half" RoPE).

Mixture-of-experts weights come either per expert (``mlp.experts.3.gate_proj.weight``, as the
published checkpoints store them) or stacked (``mlp.experts.gate_up_proj`` (E, 2I, C) and
``mlp.experts.down_proj`` (E, C, I), as transformers >= 5 holds them); both load, and we save
per expert, which every transformers version reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from scratchlm.models.convert.hf_blocks import shape_to_hf, split_stacked_experts
from scratchlm.models.llama import LlamaConfig
from scratchlm.models.qwen3 import Qwen3Config

_BLOCK = {
    "input_layernorm.weight": "norm1.weight",
    "self_attn.q_proj.weight": "att.q_proj.weight",
    "self_attn.k_proj.weight": "att.k_proj.weight",
    "self_attn.v_proj.weight": "att.v_proj.weight",
    "self_attn.q_proj.bias": "att.q_proj.bias",
    "self_attn.k_proj.bias": "att.k_proj.bias",
    "self_attn.v_proj.bias": "att.v_proj.bias",
    "self_attn.o_proj.weight": "att.out_proj.weight",
    "self_attn.q_norm.weight": "att.q_norm.weight",
    "self_attn.k_norm.weight": "att.k_norm.weight",
    "post_attention_layernorm.weight": "norm2.weight",
    "mlp.gate_proj.weight": "ff.fc1.weight",
    "mlp.up_proj.weight": "ff.fc2.weight",
    "mlp.down_proj.weight": "ff.fc3.weight",
    "mlp.gate.weight": "ff.router.weight",
}
_EXPERT = {"gate_proj.weight": "fc1.weight", "up_proj.weight": "fc2.weight",
           "down_proj.weight": "fc3.weight"}
_TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight",
        "lm_head.weight": "out_head.weight"}
# model_type -> (our config class, HF architecture)
MODEL_TYPES = {"llama": (LlamaConfig, "LlamaForCausalLM"),
               "qwen3": (Qwen3Config, "Qwen3ForCausalLM"),
               "qwen3_moe": (Qwen3Config, "Qwen3MoeForCausalLM")}


def _rope(hf: Mapping) -> tuple[float, dict | None]:
    rope = hf.get("rope_parameters") or {}  # transformers >= 5 keeps RoPE settings here
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type") == "llama3" else None)
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if kind not in (None, "llama3", "default"):
        raise ValueError(f"unsupported rope scaling {scaling!r}")
    if kind != "llama3":
        return float(theta), None
    return float(theta), {
        "factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
        "high_freq_factor": scaling["high_freq_factor"],
        "original_context_length": scaling["original_max_position_embeddings"]}


def config_from_hf(hf: Mapping) -> LlamaConfig:
    model_type = hf.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"not a Llama-layout config (model_type={model_type!r})")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias", False):
        raise ValueError("only SiLU feed-forwards without bias are supported")
    if hf.get("use_sliding_window"):
        raise ValueError("Qwen sliding-window layers (use_sliding_window) are not supported")
    theta, scaling = _rope(hf)
    kw = dict(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("max_position_embeddings", 2048),
        n_embd=hf["hidden_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        head_dim=hf.get("head_dim"),
        rope_base=theta,
        rope_scaling=scaling,
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        qkv_bias=hf.get("attention_bias", False),
    )
    if model_type == "qwen3_moe":
        if hf.get("decoder_sparse_step", 1) != 1 or hf.get("mlp_only_layers"):
            raise ValueError("Qwen3-MoE with dense layers (decoder_sparse_step, "
                             "mlp_only_layers) is not supported")
        experts = hf.get("num_experts", hf.get("num_local_experts"))  # transformers >= 5 renames
        kw["moe"] = {"num_experts": experts, "top_k": hf["num_experts_per_tok"],
                     "intermediate_size": hf["moe_intermediate_size"],
                     "norm_topk_prob": hf.get("norm_topk_prob", False),
                     "aux_loss_coef": hf.get("router_aux_loss_coef", 0.001)}
    return MODEL_TYPES[model_type][0](**kw)


def config_to_hf(cfg: LlamaConfig) -> dict:
    """A ``config.json`` dict transformers reads as this model."""
    if cfg.sliding_window:
        raise ValueError("Llama/Qwen3 models with sliding-window layers have no HF layout")
    if cfg.moe.shared_expert_size:
        raise ValueError("Qwen3-MoE has no shared expert in its HF layout (Qwen3.5-MoE has)")
    moe = cfg.moe.num_experts > 0
    model_type = "qwen3_moe" if moe else ("qwen3" if isinstance(cfg, Qwen3Config) else "llama")
    if moe and not isinstance(cfg, Qwen3Config):
        raise ValueError("a Llama with MoE layers has no HF layout here (save a Qwen3Config)")
    if cfg.qk_norm and not isinstance(cfg, Qwen3Config):
        raise ValueError("a Llama with qk_norm has no HF layout (use Qwen3Config)")
    out = {
        "architectures": [MODEL_TYPES[model_type][1]], "model_type": model_type,
        **shape_to_hf(cfg), "hidden_act": "silu", "rope_theta": cfg.rope_base,
        "attention_bias": cfg.qkv_bias,
    }
    if cfg.rope_scaling:
        s = cfg.rope_scaling
        out["rope_scaling"] = {"rope_type": "llama3", "factor": s["factor"],
                               "low_freq_factor": s["low_freq_factor"],
                               "high_freq_factor": s["high_freq_factor"],
                               "original_max_position_embeddings": s["original_context_length"]}
    if moe:
        out.update(num_experts=cfg.moe.num_experts, num_experts_per_tok=cfg.moe.top_k,
                   moe_intermediate_size=cfg.moe.intermediate_size or cfg.intermediate_size,
                   norm_topk_prob=cfg.moe.norm_topk_prob, decoder_sparse_step=1,
                   mlp_only_layers=[], router_aux_loss_coef=cfg.moe.aux_loss_coef)
    return out


def hf_key_to_ours(key: str) -> str | None:
    """One HF key -> our key (None: a buffer to skip); KeyError for keys we do not know."""
    if key in _TOP:
        return _TOP[key]
    if key.startswith("model.layers."):
        _, _, layer, rest = key.split(".", 3)
        if rest.endswith("rotary_emb.inv_freq"):
            return None
        if rest in _BLOCK:
            return f"trf_blocks.{layer}.{_BLOCK[rest]}"
        if rest.startswith("mlp.experts."):
            expert, _, tail = rest.removeprefix("mlp.experts.").partition(".")
            if expert.isdigit() and tail in _EXPERT:
                return f"trf_blocks.{layer}.ff.experts.{expert}.{_EXPERT[tail]}"
    raise KeyError(key)


def hf_to_ours(key: str, tensor: torch.Tensor, cfg) -> Iterator[tuple[str | None, torch.Tensor]]:
    """(our key, tensor) pairs for one HF tensor: stacked expert tensors split per expert."""
    if key.startswith("model.layers.") and key.endswith(("mlp.experts.gate_up_proj",
                                                        "mlp.experts.down_proj")):
        yield from split_stacked_experts(key, tensor, f"trf_blocks.{key.split('.')[2]}.ff.experts")
        return
    yield hf_key_to_ours(key), tensor


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """Our state dict -> HF keys (a tied head is left out, as HF saves it)."""
    block = {ours: hf for hf, ours in _BLOCK.items()}
    expert = {ours: hf for hf, ours in _EXPERT.items()}
    top = {ours: hf for hf, ours in _TOP.items()}
    out = {}
    for key, tensor in state.items():
        if key in top:
            if key == "out_head.weight" and cfg.tie_embeddings:
                continue
            out[top[key]] = tensor
            continue
        _, layer, rest = key.split(".", 2)
        if rest.startswith("ff.experts."):
            e, _, tail = rest.removeprefix("ff.experts.").partition(".")
            out[f"model.layers.{layer}.mlp.experts.{e}.{expert[tail]}"] = tensor
        else:
            out[f"model.layers.{layer}.{block[rest]}"] = tensor
    return {k: v.contiguous() for k, v in out.items()}

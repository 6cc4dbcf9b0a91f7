"""Hugging Face ``GptOssForCausalLM`` (model_type ``gpt_oss``) <-> our GptOss.

HF holds each layer's experts stacked, the gate and up projections interleaved in one tensor:

    mlp.experts.gate_up_proj       (E, C, 2I)  columns gate_0, up_0, gate_1, up_1, ...
    mlp.experts.gate_up_proj_bias  (E, 2I)     the same interleaving
    mlp.experts.down_proj          (E, I, C)
    mlp.experts.down_proj_bias     (E, C)

ours are one ``ClampedSwiGLU`` per expert (fc1 gate, fc2 up, fc3 down, as ``nn.Linear``
(out, in)). The published checkpoints store ``gate_up_proj`` and ``down_proj`` as MXFP4
``_blocks`` / ``_scales`` pairs, (E, out, in / 32, 16) and (E, out, in / 32), dequantized on
load (``convert/mxfp4.py``); we save plain tensors, as transformers does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from scratchlm.models.convert.hf_blocks import (ATTENTION, TOP, block_state_to_hf,
                                                layer_pattern, layer_types, shape_to_hf,
                                                yarn_from_hf, yarn_to_hf)
from scratchlm.models.convert.mxfp4 import join_mxfp4
from scratchlm.models.gpt_oss import GptOssConfig

_BLOCK = {
    **ATTENTION,
    **{k.replace(".weight", ".bias"): v.replace(".weight", ".bias")
       for k, v in ATTENTION.items() if "_proj" in k},
    "self_attn.sinks": "att.sinks",
    "input_layernorm.weight": "norm1.weight",
    "post_attention_layernorm.weight": "norm2.weight",
    "mlp.router.weight": "ff.router.weight",
    "mlp.router.bias": "ff.router.bias",
}
_TOP = TOP
_EXPERTS = ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")
MODEL_TYPES = {"gpt_oss": (GptOssConfig, "GptOssForCausalLM")}


def config_from_hf(hf: Mapping) -> GptOssConfig:
    if hf.get("model_type") != "gpt_oss":
        raise ValueError(f"not a gpt-oss config (model_type={hf.get('model_type')!r})")
    if hf.get("attention_bias", True) is not True:
        raise ValueError("attention_bias must be true (gpt-oss's projections have biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {hf['hidden_act']!r}")
    quant = (hf.get("quantization_config") or {}).get("quant_method")
    if quant not in (None, "mxfp4"):
        raise ValueError(f"unsupported quantization {quant!r} (MXFP4 experts load, dequantized)")
    n_layer = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layer)]
    rope = hf.get("rope_parameters") or {**(hf.get("rope_scaling") or {}),
                                         "rope_theta": hf.get("rope_theta", 150_000.0)}
    return GptOssConfig(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 131072),
        n_embd=hf["hidden_size"], n_layer=n_layer, n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"],
        rope_base=float(rope.get("rope_theta", 150_000.0)),
        rope_scaling=yarn_from_hf(rope, "gpt-oss"), norm_eps=hf.get("rms_norm_eps", 1e-5),
        sliding_window=hf.get("sliding_window") or 0, sliding_window_pattern=layer_pattern(types),
        swiglu_alpha=hf.get("swiglu_alpha", 1.702), swiglu_limit=hf.get("swiglu_limit", 7.0),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        moe={"num_experts": hf["num_local_experts"],
             "top_k": hf.get("num_experts_per_tok", hf.get("experts_per_token", 4)),
             "norm_topk_prob": True, "router_bias": True,
             "aux_loss_coef": hf.get("router_aux_loss_coef", 0.001)},
    )


def config_to_hf(cfg: GptOssConfig) -> dict:
    if cfg.moe.shared_expert_size:
        raise ValueError("gpt-oss has no shared expert in its HF layout")
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        **shape_to_hf(cfg), "hidden_act": "silu",
        "sliding_window": cfg.sliding_window or None, "layer_types": layer_types(cfg),
        "rope_parameters": {"rope_theta": cfg.rope_base, **yarn_to_hf(cfg.rope_scaling)},
        "num_local_experts": cfg.moe.num_experts, "num_experts_per_tok": cfg.moe.top_k,
        "router_aux_loss_coef": cfg.moe.aux_loss_coef,
        "swiglu_alpha": cfg.swiglu_alpha, "swiglu_limit": cfg.swiglu_limit,
        "attention_bias": True,
    }


def join_tensors(tensors: Iterable[tuple[str, torch.Tensor]], source: str
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors with MXFP4 pairs dequantized (``convert/mxfp4.py``)."""
    return join_mxfp4(tensors, source)


def hf_to_ours(key: str, tensor: torch.Tensor, cfg) -> Iterator[tuple[str | None, torch.Tensor]]:
    if key in TOP:
        yield TOP[key], tensor
        return
    if not key.startswith("model.layers."):
        raise KeyError(key)
    _, _, layer, rest = key.split(".", 3)
    if rest in _BLOCK:
        yield f"trf_blocks.{layer}.{_BLOCK[rest]}", tensor
        return
    name = rest.removeprefix("mlp.experts.")
    if name not in _EXPERTS:
        raise KeyError(key)
    pre = f"trf_blocks.{layer}.ff.experts"
    for e, t in enumerate(tensor):
        if name == "gate_up_proj":  # (C, 2I)
            yield f"{pre}.{e}.fc1.weight", t[:, 0::2].t()
            yield f"{pre}.{e}.fc2.weight", t[:, 1::2].t()
        elif name == "gate_up_proj_bias":  # (2I,)
            yield f"{pre}.{e}.fc1.bias", t[0::2]
            yield f"{pre}.{e}.fc2.bias", t[1::2]
        elif name == "down_proj":  # (I, C)
            yield f"{pre}.{e}.fc3.weight", t.t()
        else:
            yield f"{pre}.{e}.fc3.bias", t


def state_dict_to_hf(state: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """Our state dict under HF's names: the experts stacked (gate and up interleaved), the rest
    through the shared block map."""
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    rest = {}
    for key, tensor in state.items():
        name = key.split(".", 2)[-1]
        if key.startswith("trf_blocks.") and name.startswith("ff.experts."):
            e, _, part = name.removeprefix("ff.experts.").partition(".")
            experts.setdefault(key.split(".")[1], {}).setdefault(int(e), {})[part] = tensor
        else:
            rest[key] = tensor
    out = block_state_to_hf(rest, cfg, TOP, _BLOCK)
    for layer, per_expert in experts.items():
        pre = f"model.layers.{layer}.mlp.experts"
        rows = [per_expert[e] for e in range(len(per_expert))]
        out[f"{pre}.gate_up_proj"] = torch.stack([
            torch.stack([p["fc1.weight"].t(), p["fc2.weight"].t()], dim=-1).flatten(-2)
            for p in rows])  # (E, C, 2I), gate and up interleaved
        out[f"{pre}.gate_up_proj_bias"] = torch.stack([
            torch.stack([p["fc1.bias"], p["fc2.bias"]], dim=-1).flatten() for p in rows])
        out[f"{pre}.down_proj"] = torch.stack([p["fc3.weight"].t() for p in rows])
        out[f"{pre}.down_proj_bias"] = torch.stack([p["fc3.bias"] for p in rows])
    return {k: v.contiguous() for k, v in out.items()}

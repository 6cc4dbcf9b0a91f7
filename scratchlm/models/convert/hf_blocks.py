"""What the converters of families with Hugging Face names ``model.layers.N.<name>`` share: a
key map of one block plus a few top-level names, both ways; HF's per-layer list of attention
types read as (and written from) our every-k-th-layer-global pattern; YaRN's settings between
HF's ``rope_parameters`` and our ``rope_scaling``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from scratchlm.models.presets import every_kth

# HF's names of the parts the Llama-style families share, and ours
ATTENTION = {
    "self_attn.q_proj.weight": "att.q_proj.weight",
    "self_attn.k_proj.weight": "att.k_proj.weight",
    "self_attn.v_proj.weight": "att.v_proj.weight",
    "self_attn.o_proj.weight": "att.out_proj.weight",
    "self_attn.q_norm.weight": "att.q_norm.weight",
    "self_attn.k_norm.weight": "att.k_norm.weight",
}
GATED_MLP = {
    "mlp.gate_proj.weight": "ff.fc1.weight",
    "mlp.up_proj.weight": "ff.fc2.weight",
    "mlp.down_proj.weight": "ff.fc3.weight",
}
TOP = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight",
       "lm_head.weight": "out_head.weight"}


def block_key_to_ours(key: str, tensor: torch.Tensor, top: Mapping[str, str],
                      block: Mapping[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) of a HF weight; KeyError for a name outside the maps."""
    if key in top:
        yield top[key], tensor
        return
    if key.startswith("model.layers."):
        _, _, layer, rest = key.split(".", 3)
        if rest in block:
            yield f"trf_blocks.{layer}.{block[rest]}", tensor
            return
    raise KeyError(key)


def split_stacked_experts(key: str, tensor: torch.Tensor, pre: str
                          ) -> Iterator[tuple[str, torch.Tensor]]:
    """Our per-expert weights under ``pre`` (``trf_blocks.3.ff.experts``) from transformers'
    stacked ``...experts.gate_up_proj`` (E, 2I, C: gate rows, then up) or ``down_proj``
    (E, C, I)."""
    for e in range(tensor.shape[0]):
        if key.endswith("gate_up_proj"):
            gate, up = tensor[e].chunk(2, dim=0)  # (2I, C) -> two (I, C)
            yield f"{pre}.{e}.fc1.weight", gate
            yield f"{pre}.{e}.fc2.weight", up
        else:
            yield f"{pre}.{e}.fc3.weight", tensor[e]  # (C, I)


def block_state_to_hf(state: Mapping[str, torch.Tensor], cfg, top: Mapping[str, str],
                      block: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Our state dict under HF's names (a tied head is left out, as HF saves it)."""
    to_block = {ours: hf for hf, ours in block.items()}
    to_top = {ours: hf for hf, ours in top.items()}
    out = {}
    for key, tensor in state.items():
        if key in to_top:
            if not (key == "out_head.weight" and cfg.tie_embeddings):
                out[to_top[key]] = tensor
            continue
        _, layer, rest = key.split(".", 2)
        out[f"model.layers.{layer}.{to_block[rest]}"] = tensor
    return {k: v.contiguous() for k, v in out.items()}


def layer_pattern(layer_types: list[str], other: str = "sliding_attention",
                  last: bool = False) -> int:
    """Our ``sliding_window_pattern`` (every k-th layer full attention, the rest ``other``)
    for HF's per-layer list, when it is one; 0 when no layer is full attention. ``last``: the
    last layer is full attention too (Gemma 4's transformers makes it so)."""
    k = every_kth([t == "full_attention" for t in layer_types], last)
    if k is None or any(t not in ("full_attention", other) for t in layer_types):
        raise ValueError(f"layer_types {layer_types} is not every-k-th-layer-global")
    return k


def layer_types(cfg) -> list[str]:
    """HF's per-layer list for a config's sliding window and pattern."""
    return ["sliding_attention" if cfg.sliding_window and not (
        cfg.sliding_window_pattern and (i + 1) % cfg.sliding_window_pattern == 0)
            else "full_attention" for i in range(cfg.n_layer)]


# HF's YaRN keys -> ours (nn/rope.py)
_YARN = {"factor": "factor", "original_max_position_embeddings": "original_context_length",
         "beta_fast": "beta_fast", "beta_slow": "beta_slow",
         "attention_factor": "attention_factor", "truncate": "truncate"}


def yarn_from_hf(params: Mapping | None, family: str) -> dict | None:
    """Our ``rope_scaling`` for HF's rope parameters: None for plain RoPE, YaRN's dict, or an
    error naming ``family`` for any other scaling."""
    kind = (params or {}).get("rope_type", (params or {}).get("type", "default"))
    if kind == "default":
        return None
    if kind != "yarn":
        raise ValueError(f"unsupported rope scaling {dict(params)!r} ({family} uses YaRN)")
    if params.get("mscale") or params.get("mscale_all_dim"):
        raise ValueError(f"YaRN's mscale / mscale_all_dim are not supported for {family}")
    return {"type": "yarn", **{ours: params[hf] for hf, ours in _YARN.items()
                               if params.get(hf) is not None}}


def yarn_to_hf(scaling: dict | None) -> dict:
    """HF's ``rope_type`` and YaRN keys for our ``rope_scaling`` (YaRN's or None)."""
    if not scaling:
        return {"rope_type": "default"}
    return {"rope_type": "yarn", **{hf: scaling[ours] for hf, ours in _YARN.items()
                                    if ours in scaling}}


def shape_to_hf(cfg) -> dict:
    """The config.json keys every RoPE family shares, under Hugging Face's names: sizes, the
    norm's epsilon, tied embeddings, the saved dtype."""
    return {"vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length,
            "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim, "intermediate_size": cfg.intermediate_size,
            "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "torch_dtype": "float32"}

"""Qwen3.5's GGUF rules (llama.cpp's qwen35 and qwen35moe; a row of ``gguf_archs.ARCHS``):
the tensor names, the value heads reordered as llama.cpp's converter does (``_qwen35_fix``),
the Gated DeltaNet sizes in ``ssm.*`` metadata, and multimodal RoPE sections that turn a text
token as plain RoPE does."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scratchlm.models.convert.gguf import GGUFError, _bool_array, _int, _int_array
from scratchlm.models.convert.gguf_rules import (_ATTENTION, _GATED_FFN, _QK_NORM,
                                                 _every_kth_or_error, _llama_kwargs,
                                                 _llama_metadata)

_QWEN35_BLOCK = {  # attention layers as Qwen3's (q_proj's rows [q_h | gate_h] per head)
    "attn_norm.weight": "norm1.weight", "post_attention_norm.weight": "norm2.weight",
    **_ATTENTION, **_QK_NORM,
    # Gated DeltaNet layers
    "attn_qkv.weight": "lin.qkv_proj.weight", "attn_gate.weight": "lin.z_proj.weight",
    "ssm_alpha.weight": "lin.a_proj.weight", "ssm_beta.weight": "lin.b_proj.weight",
    "ssm_conv1d.weight": "lin.conv.weight", "ssm_a": "lin.A_log", "ssm_dt.bias": "lin.dt_bias",
    "ssm_norm.weight": "lin.norm.weight", "ssm_out.weight": "lin.out_proj.weight",
    **_GATED_FFN,
    # Qwen3.5-MoE: routed experts (_EXPERTS) beside a gated shared one
    "ffn_gate_inp.weight": "ff.router.weight",
    "ffn_gate_inp_shexp.weight": "ff.shared_expert_gate.weight",
    "ffn_gate_shexp.weight": "ff.shared_expert.fc1.weight",
    "ffn_up_shexp.weight": "ff.shared_expert.fc2.weight",
    "ffn_down_shexp.weight": "ff.shared_expert.fc3.weight",
}


def _value_heads(array: np.ndarray, axis: int, cfg, width: int, to_gguf: bool) -> np.ndarray:
    """Qwen3.5's value heads between HF's order (grouped by key head: k0v0 k0v1 .. k1v0 ..)
    and llama.cpp's (tiled: k0v0 k1v0 .. k0v1 ..), ``width`` values each, along ``axis``."""
    nk, r = cfg.linear_key_heads, cfg.linear_value_heads // cfg.linear_key_heads
    if r == 1:
        return array
    a = np.moveaxis(array, axis, 0)
    groups = (nk, r) if to_gguf else (r, nk)
    a = a.reshape(*groups, width, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)
    return np.ascontiguousarray(np.moveaxis(a, 0, axis))


def _qwen35_fix(to_gguf: bool) -> Callable:
    def fix(name: str, array: np.ndarray, cfg) -> np.ndarray:
        dv, qk = cfg.linear_value_dim, 2 * cfg.linear_key_heads * cfg.linear_key_dim
        if name == "ssm_a":  # -exp(A_log) in the file (float32 both ways: not bit-exact)
            if to_gguf:
                return _value_heads(-np.exp(array.astype(np.float64)), 0, cfg, 1, True)
            return np.log(-_value_heads(array.astype(np.float64), 0, cfg, 1, False))
        if name == "ssm_dt.bias":
            return _value_heads(array, 0, cfg, 1, to_gguf)
        if name in ("attn_qkv.weight", "ssm_conv1d.weight"):  # [q | k | v]: v's heads move
            if name == "ssm_conv1d.weight" and not to_gguf:
                array = array[:, None, :]  # (C, K) -> our Conv1d's (C, 1, K)
            out = np.concatenate([array[:qk], _value_heads(array[qk:], 0, cfg, dv, to_gguf)])
            return out[:, 0, :] if name == "ssm_conv1d.weight" and to_gguf else out
        if name == "attn_gate.weight":
            return _value_heads(array, 0, cfg, dv, to_gguf)
        if name in ("ssm_alpha.weight", "ssm_beta.weight"):
            return _value_heads(array, 0, cfg, 1, to_gguf)
        if name == "ssm_out.weight":
            return _value_heads(array, 1, cfg, dv, to_gguf)
        return array
    return fix


def _rope_sections(half: int) -> list[int]:
    """Multimodal RoPE sections under which a text token (t = h = w positions) turns every
    pair of the ``half`` = rotary_dim / 2 pairs as plain RoPE does: llama.cpp's interleaved
    sections give pair i to t, h or w by i mod 3, while i < 3 x that section's size."""
    return [-(-half // 3), -(-(half - 1) // 3), -(-(half - 2) // 3), 0]


def _qwen35_kwargs(meta: dict, a: str, source: str) -> dict:
    """Qwen35Config fields: Gated DeltaNet sizes from ``ssm.*``, the linear layers from
    ``attention.recurrent_layers`` (or ``full_attention_interval``), the rotary share from
    ``rope.dimension_count``; multimodal RoPE sections that turn every pair of a text token."""
    moe = a == "qwen35moe."
    if moe and a + "feed_forward_length" not in meta:  # the MoE models have no dense width
        meta = {**meta, a + "feed_forward_length": meta.get(a + "expert_feed_forward_length")}
    kw = _llama_kwargs(meta, a, source, rope_base=10_000_000.0, norm_eps=1e-6)
    head_dim = kw.get("head_dim") or kw["n_embd"] // kw["n_head"]
    rotary = _int(meta, a + "rope.dimension_count", source, high=head_dim)
    sections = (_int_array(meta, a + "rope.dimension_sections", source, 4, low=0, high=1 << 16)
                if a + "rope.dimension_sections" in meta else _rope_sections(rotary // 2))
    if any(i >= 3 * sections[i % 3] for i in range(rotary // 2)):
        raise GGUFError(f"{source}: {a}rope.dimension_sections {list(sections)} leave some "
                        "pairs of a text token unturned (only text is supported)")
    value_heads = _int(meta, a + "ssm.time_step_rank", source, high=1 << 12)
    inner = _int(meta, a + "ssm.inner_size", source)
    if inner % value_heads:
        raise GGUFError(f"{source}: {a}ssm.inner_size {inner} is no multiple of the "
                        f"{value_heads} value heads")
    n_layer = kw["n_layer"]
    if a + "attention.recurrent_layers" in meta:
        recurrent = _bool_array(meta, a + "attention.recurrent_layers", source, n_layer)
        # no full-attention layer: an interval past the end
        interval = _every_kth_or_error([not lin for lin in recurrent],
                                       a + "attention.recurrent_layers", source) or n_layer + 1
    else:
        interval = _int(meta, a + "full_attention_interval", source, default=4, high=4096)
    kw.update(partial_rotary_factor=rotary / head_dim, full_attention_interval=interval,
              linear_key_heads=_int(meta, a + "ssm.group_count", source, high=1 << 12),
              linear_value_heads=value_heads,
              linear_key_dim=_int(meta, a + "ssm.state_size", source, high=1 << 12),
              linear_value_dim=inner // value_heads,
              linear_conv_kernel=_int(meta, a + "ssm.conv_kernel", source, high=64))
    if moe:
        width = _int(meta, a + "expert_feed_forward_length", source)
        kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                     "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                     "intermediate_size": width, "norm_topk_prob": True,
                     "shared_expert_size": _int(meta, a + "expert_shared_feed_forward_length",
                                                source)}
    return kw


def _qwen35_metadata(cfg, a: str) -> dict:
    meta = _llama_metadata(cfg, a)
    meta.update({
        a + "rope.dimension_count": cfg.rotary_dim,
        a + "rope.dimension_sections": _rope_sections(cfg.rotary_dim // 2),
        a + "ssm.conv_kernel": cfg.linear_conv_kernel, a + "ssm.state_size": cfg.linear_key_dim,
        a + "ssm.group_count": cfg.linear_key_heads,
        a + "ssm.time_step_rank": cfg.linear_value_heads,
        a + "ssm.inner_size": cfg.linear_value_dim * cfg.linear_value_heads,
        a + "attention.recurrent_layers": list(cfg.linear_layers),
        a + "full_attention_interval": cfg.full_attention_interval})
    moe = cfg.moe
    if moe.num_experts:
        meta.update({a + "expert_count": moe.num_experts, a + "expert_used_count": moe.top_k,
                     a + "expert_feed_forward_length": moe.intermediate_size
                     or cfg.intermediate_size,
                     a + "expert_shared_feed_forward_length": moe.shared_expert_size})
    return meta


def _qwen35_check(cfg) -> None:
    if cfg.linear_key_dim != cfg.linear_value_dim:
        raise GGUFError("llama.cpp's qwen35 needs linear_key_dim = linear_value_dim, got "
                        f"{cfg.linear_key_dim} and {cfg.linear_value_dim}")
    moe = cfg.moe
    if moe.num_experts and (not moe.shared_expert_size or not moe.norm_topk_prob
                            or moe.router_bias or moe.capacity_factor):
        raise GGUFError("llama.cpp's qwen35moe has a shared expert, renormalised top-k "
                        "gates, no router bias and no expert capacity")

"""The GGUF rules of the transformer families (``gguf_archs.ARCHS`` rows): each llama.cpp
architecture's tensor names and how its metadata is read into a config and written from one,
with what export refuses, for gpt2, llama, qwen3(moe), gemma3, olmo2 and gpt-oss; and the
helpers Qwen3.5's and Gemma 4's rules share (``_llama_kwargs``, YaRN, window patterns).
llama.cpp names every field "<architecture>.<field>"; ``a`` below is that prefix."""

from __future__ import annotations

import numpy as np

from scratchlm.models.convert.gguf import (GGUFError, _bool_array, _float, _int,
                                           rope_freq_factors, scaling_from_freq_factors)
from scratchlm.models.presets import every_kth

# the parts every RoPE family's block shares, under llama.cpp's names and ours
_ATTENTION = {"attn_q.weight": "att.q_proj.weight", "attn_k.weight": "att.k_proj.weight",
              "attn_v.weight": "att.v_proj.weight", "attn_output.weight": "att.out_proj.weight"}
_QKV_BIASES = {"attn_q.bias": "att.q_proj.bias", "attn_k.bias": "att.k_proj.bias",
               "attn_v.bias": "att.v_proj.bias"}
_GATED_FFN = {"ffn_gate.weight": "ff.fc1.weight", "ffn_up.weight": "ff.fc2.weight",
              "ffn_down.weight": "ff.fc3.weight"}
_LLAMA_BLOCK = {"attn_norm.weight": "norm1.weight", **_ATTENTION, **_QKV_BIASES,
                "ffn_norm.weight": "norm2.weight", **_GATED_FFN}
_QK_NORM = {"attn_q_norm.weight": "att.q_norm.weight", "attn_k_norm.weight": "att.k_norm.weight"}
_MOE = {"ffn_gate_inp.weight": "ff.router.weight"}
_GEMMA3_BLOCK = {**_LLAMA_BLOCK, **_QK_NORM,
                 "post_attention_norm.weight": "post_att_norm.weight",
                 "post_ffw_norm.weight": "post_ff_norm.weight"}

def _llama3_freqs_read(factors: np.ndarray, kw: dict, source: str) -> dict:
    head_dim = kw.get("head_dim") or kw["n_embd"] // kw["n_head"]
    return {"rope_scaling": scaling_from_freq_factors(factors, head_dim, kw["rope_base"], source)}


def _llama3_freqs_write(cfg) -> np.ndarray | None:
    s = cfg.rope_scaling
    return rope_freq_factors(cfg.head_dim, cfg.rope_base, s) if s else None



def _widths(meta: dict, a: str, source: str) -> tuple[int, int, list]:
    """(embedding width, query heads, vocabulary tokens): read first, by every architecture."""
    n_embd = _int(meta, a + "embedding_length", source)
    n_head = _int(meta, a + "attention.head_count", source)
    return n_embd, n_head, meta.get("tokenizer.ggml.tokens") or []


def _llama_kwargs(meta: dict, a: str, source: str, rope_base: float = 10000.0,
                  norm_eps: float = 1e-5) -> dict:
    """LlamaConfig / Qwen3Config fields; ``head_dim`` only where the file gives one."""
    n_embd, n_head, tokens = _widths(meta, a, source)
    kw = dict(
        vocab_size=_int(meta, a + "vocab_size", source, default=len(tokens) or None),
        context_length=_int(meta, a + "context_length", source, high=1 << 24),
        n_embd=n_embd, n_layer=_int(meta, a + "block_count", source, high=4096), n_head=n_head,
        n_kv_head=_int(meta, a + "attention.head_count_kv", source, default=n_head),
        intermediate_size=_int(meta, a + "feed_forward_length", source),
        rope_base=_float(meta, a + "rope.freq_base", rope_base),
        norm_eps=_float(meta, a + "attention.layer_norm_rms_epsilon", norm_eps),
    )
    head_dim = meta.get(a + "attention.key_length", meta.get(a + "rope.dimension_count"))
    if head_dim is not None:
        kw["head_dim"] = _int(meta, a + "attention.key_length", source, default=head_dim,
                              high=1 << 16)
    elif n_embd % n_head:
        raise GGUFError(f"{source}: embedding_length {n_embd} is not a multiple of head_count "
                        f"{n_head} and no key_length is given")
    return kw


def _llama_metadata(cfg, a: str) -> dict[str, int | float | str]:
    return {
        a + "vocab_size": cfg.vocab_size, a + "context_length": cfg.context_length,
        a + "embedding_length": cfg.n_embd, a + "block_count": cfg.n_layer,
        a + "feed_forward_length": cfg.intermediate_size,
        a + "attention.head_count": cfg.n_head, a + "attention.head_count_kv": cfg.n_kv_head,
        a + "attention.key_length": cfg.head_dim, a + "attention.value_length": cfg.head_dim,
        a + "rope.dimension_count": cfg.head_dim, a + "rope.freq_base": float(cfg.rope_base),
        a + "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
    }


def _qwen3moe_kwargs(meta: dict, a: str, source: str) -> dict:
    """Qwen3's fields and its experts (gates always renormalised: norm_topk_prob)."""
    kw = _llama_kwargs(meta, a, source)
    kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                 "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                 "intermediate_size": _int(meta, a + "expert_feed_forward_length", source),
                 "norm_topk_prob": True}
    return kw


def _qwen3moe_metadata(cfg, a: str) -> dict[str, int | float | str]:
    meta = _llama_metadata(cfg, a)
    meta.update({a + "expert_count": cfg.moe.num_experts, a + "expert_used_count": cfg.moe.top_k,
                 a + "expert_feed_forward_length": cfg.moe.intermediate_size
                 or cfg.intermediate_size})
    return meta


def _gemma3_kwargs(meta: dict, a: str, source: str) -> dict:
    """Gemma3Config fields: llama.cpp fixes the 5:1 local/global pattern and scales queries by
    head_dim; the local RoPE base is Gemma's default."""
    kw = _llama_kwargs(meta, a, source, rope_base=1_000_000.0, norm_eps=1e-6)
    kw["sliding_window"] = _int(meta, a + "attention.sliding_window", source, default=512)
    kw["sliding_window_pattern"] = 6  # fixed for Gemma 3 in llama.cpp
    kw["query_pre_attn_scalar"] = int(kw.get("head_dim", kw["n_embd"] // kw["n_head"]))
    if meta.get(a + "rope.scaling.type") == "linear":
        kw["rope_linear_factor"] = _float(meta, a + "rope.scaling.factor", 1.0)
    return kw


def _gemma3_metadata(cfg, a: str) -> dict[str, int | float | str]:
    meta = _llama_metadata(cfg, a)
    meta[a + "attention.sliding_window"] = cfg.sliding_window
    if cfg.rope_linear_factor != 1.0:
        meta[a + "rope.scaling.type"] = "linear"
        meta[a + "rope.scaling.factor"] = float(cfg.rope_linear_factor)
    return meta


def _gemma3_check(cfg) -> None:
    if (cfg.rope_local_base != 10_000.0 or cfg.sliding_window_pattern != 6
            or cfg.query_pre_attn_scalar != cfg.head_dim):
        raise GGUFError("gemma3 GGUF fixes the local RoPE base (10000), the 5:1 layer pattern "
                        "and query_pre_attn_scalar = head_dim; this config differs")


def _gpt2_kwargs(meta: dict, a: str, source: str) -> dict:
    """GPTConfig fields: its feed-forward width is 4 C and its LayerNorm eps 1e-5, fixed."""
    n_embd, n_head, tokens = _widths(meta, a, source)
    if _int(meta, a + "feed_forward_length", source, default=4 * n_embd) != 4 * n_embd:
        raise GGUFError(f"{source}: a gpt2 feed_forward_length other than 4 x embedding_length "
                        "is not supported")
    eps = _float(meta, a + "attention.layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-9:
        raise GGUFError(f"{source}: gpt2 layer_norm_epsilon {eps} is not supported (1e-5)")
    if n_embd % n_head:
        raise GGUFError(f"{source}: embedding_length {n_embd} is not a multiple of head_count "
                        f"{n_head}")
    return dict(vocab_size=_int(meta, a + "vocab_size", source, default=len(tokens) or None),
                context_length=_int(meta, a + "context_length", source, high=1 << 24),
                n_embd=n_embd, n_layer=_int(meta, a + "block_count", source, high=4096),
                n_head=n_head)


def _gpt2_metadata(cfg, a: str) -> dict[str, int | float | str]:
    return {a + "vocab_size": cfg.vocab_size, a + "context_length": cfg.context_length,
            a + "embedding_length": cfg.n_embd, a + "block_count": cfg.n_layer,
            a + "feed_forward_length": 4 * cfg.n_embd, a + "attention.head_count": cfg.n_head,
            a + "attention.layer_norm_epsilon": 1e-5}


_OLMO2_BLOCK = {  # norms after attention and the feed-forward only; q/k norms over all heads
    **_ATTENTION, **_QK_NORM, "post_attention_norm.weight": "att_out_norm.weight",
    **_GATED_FFN, "post_ffw_norm.weight": "ff_out_norm.weight",
}


def _yarn_mscale(factor: float) -> float:
    """The factor llama.cpp's YaRN puts on cos and sin: 0.1 ln(factor) + 1."""
    return 1.0 if factor <= 1 else 0.1 * float(np.log(factor)) + 1.0


def _window_pattern(meta: dict, a: str, source: str, n_layer: int, default: int) -> int:
    """Our every-k-th-layer-global ``sliding_window_pattern`` from ``attention.
    sliding_window_pattern``: a per-layer bool array (True: local), or n (every n-th global)."""
    pattern = meta.get(a + "attention.sliding_window_pattern", default)
    if not isinstance(pattern, (list, tuple)):
        return _int(meta, a + "attention.sliding_window_pattern", source, default=default,
                    high=4096)
    local = _bool_array(meta, a + "attention.sliding_window_pattern", source, n_layer)
    return _every_kth_or_error([not w for w in local], a + "attention.sliding_window_pattern",
                               source)


def _every_kth_or_error(flags: list[bool], key: str, source: str, last: bool = False) -> int:
    """``presets.every_kth`` of a file's per-layer array, or a ``GGUFError`` naming it."""
    k = every_kth(flags, last)
    if k is None:
        raise GGUFError(f"{source}: {key} is not every-k-th-layer")
    return k


def _yarn_kwargs(meta: dict, a: str, source: str, context_length: int) -> dict | None:
    """YaRN from ``rope.scaling.*`` as llama.cpp applies it: its betas fixed at 32 and 1, the
    correction range rounded to whole dimensions (``truncate``), and cos/sin times
    0.1 ln(factor) + 1, times ``rope.scaling.attn_factor``."""
    kind = meta.get(a + "rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind != "yarn":
        raise GGUFError(f"{source}: rope scaling {kind!r} is not supported here (YaRN is)")
    factor = _float(meta, a + "rope.scaling.factor", 1.0)
    extra = _float(meta, a + "rope.scaling.attn_factor", 1.0)
    return {"type": "yarn", "factor": factor,
            "original_context_length": _int(meta, a + "rope.scaling.original_context_length",
                                            source, default=context_length),
            **({"attention_factor": _yarn_mscale(factor) * extra} if extra != 1.0 else {})}


def _yarn_metadata(s: dict | None, a: str) -> dict:
    if not s:
        return {}
    meta = {a + "rope.scaling.type": "yarn", a + "rope.scaling.factor": float(s["factor"]),
            a + "rope.scaling.original_context_length": s["original_context_length"]}
    if s.get("attention_factor") is not None:
        meta[a + "rope.scaling.attn_factor"] = float(s["attention_factor"]
                                                     / _yarn_mscale(s["factor"]))
    return meta


def _yarn_check(s: dict | None, arch: str) -> None:
    s = s or {}
    if s.get("beta_fast", 32) != 32 or s.get("beta_slow", 1) != 1:
        raise GGUFError(f"llama.cpp's {arch} fixes YaRN's beta_fast (32) and beta_slow (1); "
                        f"this config has {s}")


def _olmo2_kwargs(meta: dict, a: str, source: str) -> dict:
    """Olmo3Config fields (OLMo 2 is OLMo 3 without local layers or YaRN): the local layers
    from ``attention.sliding_window`` and its per-layer pattern, YaRN (``_yarn_kwargs``) on
    the global layers, as llama.cpp applies it."""
    kw = _llama_kwargs(meta, a, source, rope_base=500_000.0, norm_eps=1e-6)
    window = _int(meta, a + "attention.sliding_window", source, default=0, low=0)
    kw["sliding_window"] = window
    kw["sliding_window_pattern"] = (_window_pattern(meta, a, source, kw["n_layer"], 4)
                                    if window else 0)  # no local layers: OLMo 2
    kw["rope_scaling"] = _yarn_kwargs(meta, a, source, kw["context_length"])
    return kw


def _windows_metadata(cfg, a: str) -> dict:
    from scratchlm.nn.attention import layer_windows  # torch: not for requantizing a file

    if not cfg.sliding_window:
        return {}
    return {a + "attention.sliding_window": cfg.sliding_window,
            a + "attention.sliding_window_pattern": [
                bool(w) for w in layer_windows(cfg, type(cfg).__name__)]}


def _olmo2_metadata(cfg, a: str) -> dict:
    return {**_llama_metadata(cfg, a), **_windows_metadata(cfg, a),
            **_yarn_metadata(cfg.rope_scaling, a)}


def _olmo2_check(cfg) -> None:
    if cfg.n_head * cfg.head_dim != cfg.n_embd:
        raise GGUFError("llama.cpp's olmo2 needs n_head * head_dim = n_embd, got "
                        f"{cfg.n_head} x {cfg.head_dim} != {cfg.n_embd}")
    if cfg.qkv_bias or cfg.moe.num_experts:
        raise GGUFError("llama.cpp's olmo2 has no attention biases or experts")
    _yarn_check(cfg.rope_scaling, "olmo2")
    if not (cfg.rope_scaling or {}).get("truncate", True):
        raise GGUFError("llama.cpp's olmo2 rounds YaRN's correction range (truncate); this "
                        "config does not")


_GPT_OSS_BLOCK = {  # pre-norm; sinks; biases everywhere; experts in _EXPERTS
    "attn_norm.weight": "norm1.weight", **_ATTENTION, **_QKV_BIASES,
    "attn_output.bias": "att.out_proj.bias", "attn_sinks.weight": "att.sinks",
    "post_attention_norm.weight": "norm2.weight", "ffn_gate_inp.weight": "ff.router.weight",
    "ffn_gate_inp.bias": "ff.router.bias",
}


def _gpt_oss_kwargs(meta: dict, a: str, source: str) -> dict:
    """GptOssConfig fields: the experts' width is ``expert_feed_forward_length``; local and
    global layers alternate unless a per-layer pattern says otherwise; YaRN on every layer
    (``_yarn_kwargs``). llama.cpp fixes the clamped SwiGLU's alpha (1.702) and limit (7)."""
    kw = _llama_kwargs(meta, a, source, rope_base=150_000.0, norm_eps=1e-5)
    kw["intermediate_size"] = _int(meta, a + "expert_feed_forward_length", source)
    kw["sliding_window"] = _int(meta, a + "attention.sliding_window", source)
    kw["sliding_window_pattern"] = _window_pattern(meta, a, source, kw["n_layer"], 2)
    kw["rope_scaling"] = _yarn_kwargs(meta, a, source, kw["context_length"])
    kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                 "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                 "norm_topk_prob": True, "router_bias": True}
    return kw


def _gpt_oss_metadata(cfg, a: str) -> dict:
    meta = _llama_metadata(cfg, a)
    meta.update({a + "expert_count": cfg.moe.num_experts, a + "expert_used_count": cfg.moe.top_k,
                 a + "expert_feed_forward_length": cfg.moe.intermediate_size
                 or cfg.intermediate_size})
    return {**meta, **_windows_metadata(cfg, a), **_yarn_metadata(cfg.rope_scaling, a)}


def _gpt_oss_check(cfg) -> None:
    if cfg.swiglu_alpha != 1.702 or cfg.swiglu_limit != 7.0:
        raise GGUFError("llama.cpp's gpt-oss fixes the experts' swiglu_alpha (1.702) and "
                        f"swiglu_limit (7.0); this config has {cfg.swiglu_alpha}, "
                        f"{cfg.swiglu_limit}")
    moe = cfg.moe
    if not moe.norm_topk_prob or not moe.router_bias or moe.capacity_factor:
        raise GGUFError("llama.cpp's gpt-oss routes with a biased router, a softmax over the "
                        "top k and no expert capacity")
    if not cfg.sliding_window:
        raise GGUFError("llama.cpp's gpt-oss needs a sliding window")
    _yarn_check(cfg.rope_scaling, "gpt-oss")


_GPT2_BLOCK = {
    "attn_norm.weight": "norm1.scale", "attn_norm.bias": "norm1.shift",
    "attn_qkv.weight": "att.qkv.weight", "attn_qkv.bias": "att.qkv.bias",
    "attn_output.weight": "att.out_proj.weight", "attn_output.bias": "att.out_proj.bias",
    "ffn_norm.weight": "norm2.scale", "ffn_norm.bias": "norm2.shift",
    "ffn_up.weight": "ff.layers.0.weight", "ffn_up.bias": "ff.layers.0.bias",
    "ffn_down.weight": "ff.layers.2.weight", "ffn_down.bias": "ff.layers.2.bias",
}
_GPT2_TOP = {"token_embd.weight": "tok_emb.weight", "position_embd.weight": "pos_emb.weight",
             "output_norm.weight": "final_norm.scale", "output_norm.bias": "final_norm.shift",
             "output.weight": "out_head.weight"}

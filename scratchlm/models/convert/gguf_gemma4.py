"""Gemma 4's GGUF rules (llama.cpp's gemma4; a row of ``gguf_archs.ARCHS``): the tensor names
(per-layer embeddings, the mixture's fused experts and router scales), per-layer head counts
and widths, proportional RoPE as a ``rope_freqs`` tensor, and keys-as-values read from which
tensors a file has."""

from __future__ import annotations

import numpy as np

from scratchlm.models.convert.gguf import (_TOP, GGUFError, _bool_array, _float, _int,
                                           _int_array)
from scratchlm.models.convert.gguf_rules import (_ATTENTION, _GATED_FFN, _QK_NORM,
                                                 _every_kth_or_error, _widths)

_GEMMA4_TOP = {**_TOP, "per_layer_token_embd.weight": "ple_emb.weight",
               "per_layer_model_proj.weight": "ple_proj.weight",
               "per_layer_proj_norm.weight": "ple_norm.weight"}
_GEMMA4_BLOCK = {
    "attn_norm.weight": "norm1.weight", **_ATTENTION, **_QK_NORM,
    "post_attention_norm.weight": "post_att_norm.weight", "ffn_norm.weight": "norm2.weight",
    **_GATED_FFN, "post_ffw_norm.weight": "post_ff_norm.weight",
    "pre_ffw_norm_2.weight": "moe_norm.weight", "post_ffw_norm_1.weight": "post_ff_norm_1.weight",
    "post_ffw_norm_2.weight": "post_ff_norm_2.weight",
    "ffn_gate_inp.weight": "moe.router.weight", "ffn_gate_inp.scale": "moe.router_scale",
    "ffn_down_exps.scale": "moe.expert_scale",
    "inp_gate.weight": "ple_gate.weight", "proj.weight": "ple_out.weight",
    "post_norm.weight": "ple_norm.weight", "layer_output_scale.weight": "layer_scalar",
}


def _gemma4_kwargs(meta: dict, a: str, source: str) -> dict:
    """Gemma4Config fields: global layers' head size from ``key_length``, local ones' from
    ``key_length_swa``, key/value heads per layer (an array where they differ), the FFN
    width per layer (an array: twice as wide in the KV-shared layers), the local layers as a
    per-layer bool array, the soft cap, the per-layer embedding width."""
    n_embd, n_head, tokens = _widths(meta, a, source)
    n_layer = _int(meta, a + "block_count", source, high=4096)
    local = _bool_array(meta, a + "attention.sliding_window_pattern", source, n_layer)
    pattern = _every_kth_or_error([not w for w in local], a + "attention.sliding_window_pattern",
                                  source, last=True)  # every k-th layer global, and the last
    local_dim = _int(meta, a + "attention.key_length_swa", source, high=1 << 16)
    global_dim = _int(meta, a + "attention.key_length", source, high=1 << 16)
    for key, dim in (("rope.dimension_count", global_dim), ("rope.dimension_count_swa", local_dim)):
        if _int(meta, a + key, source, default=dim, high=1 << 16) != dim:  # rope_freqs says it
            raise GGUFError(f"{source}: {a}{key} other than the head size is not supported "
                            "(Gemma 4 turns its global heads' first pairs through rope_freqs)")
    shared = _int(meta, a + "attention.shared_kv_layers", source, default=0, low=0, high=4096)

    def per_layer(key: str) -> list[int]:  # one value for all layers, or one per layer
        if isinstance(meta.get(a + key), (list, tuple)):
            return _int_array(meta, a + key, source, n_layer)
        return [_int(meta, a + key, source)] * n_layer

    kv = per_layer("attention.head_count_kv")
    local_kv = {v for v, w in zip(kv, local) if w} or {kv[0]}
    global_kv = {v for v, w in zip(kv, local) if not w}
    if len(local_kv) != 1 or len(global_kv) != 1:
        raise GGUFError(f"{source}: {a}attention.head_count_kv differs within local or global "
                        "layers")
    ffn = per_layer("feed_forward_length")
    width = ffn[0]
    double = any(f != width for f in ffn)
    if double and ffn != [width * (2 if i >= n_layer - shared else 1) for i in range(n_layer)]:
        raise GGUFError(f"{source}: {a}feed_forward_length is neither one width nor twice it "
                        "in the KV-shared layers")
    ple = _int(meta, a + "embedding_length_per_layer_input", source, default=0, low=0)
    vocab = _int(meta, a + "vocab_size", source, default=len(tokens) or None)
    kw = dict(vocab_size=vocab,
              context_length=_int(meta, a + "context_length", source, high=1 << 24),
              n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_kv_head=local_kv.pop(),
              head_dim=local_dim, global_head_dim=global_dim, n_global_kv_head=global_kv.pop(),
              intermediate_size=width, double_wide_mlp=double, kv_shared_layers=shared,
              rope_base=_float(meta, a + "rope.freq_base", 1_000_000.0),
              rope_local_base=_float(meta, a + "rope.freq_base_swa", 10_000.0),
              norm_eps=_float(meta, a + "attention.layer_norm_rms_epsilon", 1e-6),
              sliding_window=_int(meta, a + "attention.sliding_window", source),
              sliding_window_pattern=pattern,
              final_logit_softcap=_float(meta, a + "final_logit_softcapping", 30.0),
              ple_dim=ple, ple_vocab_size=vocab)
    if a + "expert_count" in meta:
        kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                     "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                     "intermediate_size": _int(meta, a + "expert_feed_forward_length", source),
                     "norm_topk_prob": True}
    return kw


def _gemma4_metadata(cfg, a: str) -> dict:
    windows = cfg.windows
    first_shared = cfg.n_layer - cfg.kv_shared_layers
    meta = {
        a + "vocab_size": cfg.vocab_size, a + "context_length": cfg.context_length,
        a + "embedding_length": cfg.n_embd, a + "block_count": cfg.n_layer,
        a + "attention.head_count": cfg.n_head,
        a + "attention.head_count_kv": [cfg.n_kv_head if w else cfg.global_kv_heads
                                        for w in windows],
        a + "feed_forward_length": [cfg.intermediate_size * (
            2 if cfg.double_wide_mlp and i >= first_shared else 1) for i in range(cfg.n_layer)],
        a + "attention.key_length": cfg.global_head_dim,
        a + "attention.value_length": cfg.global_head_dim,
        a + "attention.key_length_swa": cfg.head_dim, a + "attention.value_length_swa": cfg.head_dim,
        a + "rope.dimension_count": cfg.global_head_dim, a + "rope.dimension_count_swa": cfg.head_dim,
        a + "rope.freq_base": float(cfg.rope_base), a + "rope.freq_base_swa": float(cfg.rope_local_base),
        a + "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        a + "attention.sliding_window": cfg.sliding_window,
        a + "attention.sliding_window_pattern": [bool(w) for w in windows],
        a + "attention.shared_kv_layers": cfg.kv_shared_layers,
        a + "embedding_length_per_layer_input": cfg.ple_dim,
        # llama.cpp's default is 30: a model without a cap says 0
        a + "final_logit_softcapping": float(cfg.final_logit_softcap)}
    if cfg.moe.num_experts:
        meta.update({a + "expert_count": cfg.moe.num_experts, a + "expert_used_count": cfg.moe.top_k,
                     a + "expert_feed_forward_length": cfg.moe.intermediate_size
                     or cfg.intermediate_size})
    return meta


def _gemma4_check(cfg) -> None:
    first = cfg.n_layer - cfg.kv_shared_layers
    windows = cfg.windows
    if cfg.kv_shared_layers and (first < 2 or windows[first - 1] or not windows[first - 2]):
        raise GGUFError("llama.cpp's gemma4 reads a shared local layer's keys from layer "
                        "n_layer - kv_shared_layers - 2 and a global one's from the layer after "
                        "it: those must be a local and a global layer")
    if cfg.ple_dim and cfg.ple_vocab_size != cfg.vocab_size:
        raise GGUFError("llama.cpp's gemma4 needs the per-layer embedding table as tall as the "
                        f"vocabulary ({cfg.ple_vocab_size} != {cfg.vocab_size})")
    if not cfg.sliding_window:
        raise GGUFError("llama.cpp's gemma4 needs a sliding window")


def _gemma4_freqs_read(factors: np.ndarray, kw: dict, source: str) -> dict:
    """Proportional RoPE as llama.cpp's converter writes it: factor 1 for the pairs that
    turn, 1e30 (they never do) for the rest of a global head."""
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    turned = int((f == 1.0).sum())
    if f.shape[0] != kw["global_head_dim"] // 2 or not (f[:turned] == 1.0).all() or not (
            f[turned:] >= 1e20).all():
        raise GGUFError(f"{source}: rope_freqs is not proportional RoPE (ones, then 1e30)")
    return {"global_rotary_factor": turned / f.shape[0]}


def _gemma4_freqs_write(cfg) -> np.ndarray:
    from scratchlm.nn.rope import proportional_pairs  # torch: not for requantizing a file

    half = cfg.global_head_dim // 2
    turned = proportional_pairs(cfg.global_rotary_factor, cfg.global_head_dim)
    return np.array([1.0] * turned + [1e30] * (half - turned), dtype=np.float32)


def _gemma4_from_names(names: set) -> dict:
    """Keys as values (no ``attn_v`` in a global layer that computes keys) is in no metadata
    field: the tensors say it."""
    has_k = {n.split(".")[1] for n in names if n.endswith(".attn_k.weight")}
    has_v = {n.split(".")[1] for n in names if n.endswith(".attn_v.weight")}
    return {"k_eq_v": bool(has_k - has_v)}

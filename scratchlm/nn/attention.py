"""Self-attention, every variant the book builds (chapter 3 and its bonus notebook), in order:

1. ``simplified_self_attention``: no trainable weights; scores are dot products of the inputs.
2. ``SelfAttentionV1`` (weights as ``nn.Parameter``) and ``SelfAttentionV2`` (``nn.Linear``).
3. ``CausalAttention``: a causal mask registered as a buffer, dropout on the attention weights.
4. ``MultiHeadAttentionWrapper``: several ``CausalAttention`` heads stacked side by side.
5. ``MultiHeadAttention``: one set of projections split into heads, plus ``out_proj``.
6. ``MHACombinedQKV``: one matmul makes queries, keys and values together.
7. ``MHAEinsum``: the same computation written with ``torch.einsum``.
8. ``CausalSelfAttention``: the production path used by our models, on
   ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where the hardware has
   them; ``is_causal=True`` so no mask is materialised).

With the same weights and dropout 0, 5-8 give identical outputs (tests/nn/test_attention.py).
Shapes: ``B`` batch, ``T`` tokens, ``C`` = d_in, ``H`` heads, ``D`` = head_dim.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.nn.fuse import concat_linears
from scratchlm.nn.native import step_linear
from scratchlm.nn.packed_attention import PackedMask, sdpa
from scratchlm.nn.rope import apply_rope


def causal_mask(context_length: int) -> torch.Tensor:
    """(L, L) with ones above the diagonal: the future positions a query may not see. Kept as
    a non-persistent buffer, it moves with the module (.to(device)) but is not trained."""
    return torch.triu(torch.ones(context_length, context_length), diagonal=1)


def simplified_self_attention(inputs: torch.Tensor) -> torch.Tensor:
    """(T, C) -> (T, C): each output is a softmax-weighted sum of all inputs."""
    attn_scores = inputs @ inputs.T  # (T, T)
    attn_weights = torch.softmax(attn_scores, dim=-1)
    return attn_weights @ inputs


class SelfAttentionV1(nn.Module):
    """Scaled dot-product attention with weight matrices as raw Parameters; (T, d_in) -> (T, d_out)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys, queries, values = x @ self.W_key, x @ self.W_query, x @ self.W_value
        attn_scores = queries @ keys.T  # (T, T)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


class SelfAttentionV2(nn.Module):
    """As V1 with ``nn.Linear`` layers (better initialisation, optional bias)."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys, queries, values = self.W_key(x), self.W_query(x), self.W_value(x)
        attn_scores = queries @ keys.T
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


class CausalAttention(nn.Module):
    """One causal head on batches: (B, T, d_in) -> (B, T, d_out)."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 qkv_bias: bool = False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, d_in = x.shape
        keys, queries, values = self.W_key(x), self.W_query(x), self.W_value(x)
        attn_scores = queries @ keys.transpose(1, 2)  # (B, T, T)
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        return attn_weights @ values


class MultiHeadAttentionWrapper(nn.Module):
    """``num_heads`` independent CausalAttention heads, outputs concatenated:
    (B, T, d_in) -> (B, T, num_heads * d_out)."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out, context_length, dropout, qkv_bias)
             for _ in range(num_heads)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


def _check_heads(d_out: int, num_heads: int) -> int:
    if d_out % num_heads:
        raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
    return d_out // num_heads


class MultiHeadAttention(nn.Module):
    """Multi-head attention with weight splitting: one projection per Q/K/V, split into heads."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.head_dim = _check_heads(d_out, num_heads)
        self.d_out, self.num_heads = d_out, num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # combines the heads' outputs
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, d_in = x.shape
        h, d = self.num_heads, self.head_dim
        keys = self.W_key(x).view(b, num_tokens, h, d).transpose(1, 2)  # (B, H, T, D)
        queries = self.W_query(x).view(b, num_tokens, h, d).transpose(1, 2)  # (B, H, T, D)
        values = self.W_value(x).view(b, num_tokens, h, d).transpose(1, 2)  # (B, H, T, D)
        attn_scores = queries @ keys.transpose(2, 3)  # (B, H, T, T)
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / d**0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        context = (attn_weights @ values).transpose(1, 2)  # (B, T, H, D)
        context = context.contiguous().view(b, num_tokens, self.d_out)  # (B, T, C)
        return self.out_proj(context)


class MHACombinedQKV(nn.Module):
    """As MultiHeadAttention, with one ``qkv`` Linear producing Q, K and V in a single matmul."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.head_dim = _check_heads(d_out, num_heads)
        self.d_out, self.num_heads = d_out, num_heads
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, _ = x.shape
        qkv = self.qkv(x).view(b, num_tokens, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, D)
        queries, keys, values = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        attn_scores = queries @ keys.transpose(-2, -1)  # (B, H, T, T)
        attn_scores = attn_scores.masked_fill(
            self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = self.dropout(torch.softmax(attn_scores / self.head_dim**0.5, dim=-1))
        context = (attn_weights @ values).transpose(1, 2)  # (B, T, H, D)
        return self.out_proj(context.reshape(b, num_tokens, self.d_out))


class MHAEinsum(nn.Module):
    """Multi-head attention written with einsum; weights kept as (d_in, d_out) Parameters."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.head_dim = _check_heads(d_out, num_heads)
        self.d_out, self.num_heads = d_out, num_heads
        self.W_query = nn.Parameter(torch.empty(d_in, d_out))
        self.W_key = nn.Parameter(torch.empty(d_in, d_out))
        self.W_value = nn.Parameter(torch.empty(d_in, d_out))
        for w in (self.W_query, self.W_key, self.W_value):
            nn.init.kaiming_uniform_(w, a=5**0.5)
        if qkv_bias:
            self.bias_q = nn.Parameter(torch.zeros(d_out))
            self.bias_k = nn.Parameter(torch.zeros(d_out))
            self.bias_v = nn.Parameter(torch.zeros(d_out))
        else:
            self.register_parameter("bias_q", None)
            self.register_parameter("bias_k", None)
            self.register_parameter("bias_v", None)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = torch.einsum("bnd,di->bni", x, self.W_query)  # (B, T, C)
        k = torch.einsum("bnd,di->bni", x, self.W_key)
        v = torch.einsum("bnd,di->bni", x, self.W_value)
        if self.bias_q is not None:
            q, k, v = q + self.bias_q, k + self.bias_k, v + self.bias_v
        q = q.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / self.head_dim**0.5  # (B, H, T, T)
        scores = scores.masked_fill(self.mask.bool()[:n, :n], -torch.inf)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.einsum("bhnm,bhmd->bhnd", weights, v)  # (B, H, T, D)
        context = context.transpose(1, 2).reshape(b, n, self.d_out)  # (B, T, C)
        return self.out_proj(context)


class CausalSelfAttention(nn.Module):
    """The production multi-head causal attention: fused QKV projection and PyTorch's
    ``scaled_dot_product_attention`` with ``is_causal=True`` (no (T, T) mask in memory).

    ``context_length`` is kept for the interface (and validated by the model); SDPA needs no
    mask buffer. Dropout applies to the attention weights in training, as in the book.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.head_dim = _check_heads(d_out, num_heads)
        self.d_out, self.num_heads, self.context_length = d_out, num_heads, context_length
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = dropout
        self.window = 0  # > 0: a sliding-window (local) layer, see GroupedQueryAttention

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        """x (B, T, C). With a ``KVCache`` the new keys/values are appended to it and the queries
        attend to everything cached (see nn/kv_cache.py)."""
        b, num_tokens, _ = x.shape
        qkv = self.qkv(x).view(b, num_tokens, 3, self.num_heads, self.head_dim)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        k, v, mask, causal = attend_cached(cache, layer, k, v, num_tokens, self.window)
        context = sdpa(q, k, v, mask, causal,
                       dropout=self.dropout if self.training else 0.0)  # (B, H, T, D)
        context = context.transpose(1, 2).reshape(b, num_tokens, self.d_out)  # (B, T, C)
        return self.out_proj(context)


class GroupedQueryAttention(nn.Module):
    """Causal attention where ``n_kv_head`` key/value heads are shared by groups of query heads
    (Llama's GQA), with rotary position embeddings, on SDPA.

        queries:  H heads    q0 q1 q2 | q3 q4 q5 | q6 q7 q8
        keys:     KV heads   k0       | k1       | k2          (H / KV queries share one)

    ``forward(x, cos, sin)``: x (B, T, C); cos/sin (T, D) for the positions of x.

    Switches the other families need (each off by default, so Llama is unchanged):
    - ``make_norm(head_dim)``: an RMSNorm over each query and key head before RoPE
      (``q_norm``/``k_norm``; Qwen3, Gemma 3); with ``norm_all_heads``, ``make_norm(n * head_dim)``
      over all query (key) heads together instead (OLMo 2/3);
    - ``scale``: the factor on q.k (default 1/sqrt(head_dim); Gemma 3 uses
      query_pre_attn_scalar^-0.5);
    - ``window`` (attribute): > 0 makes this a local layer, each query sees only the last
      ``window`` positions including its own (sliding-window attention);
    - ``sinks``: one learned logit per query head that joins each softmax as a key with a zero
      value, so a head may attend to nothing (gpt-oss; ``attention_with_sinks``);
    - ``out_bias``: a bias on the output projection (gpt-oss; ``qkv_bias`` is the others');
    - ``output_gate``: ``q_proj`` also gives each head a gate (its rows [q_h | gate_h] per
      head), and the heads' outputs are multiplied by sigmoid(gate) before ``out_proj``
      (Qwen3.5's gated attention);
    - ``rotary_dim``: RoPE turns only each head's first ``rotary_dim`` dimensions, the rest
      pass (Qwen3.5's partial rotary factor; cos/sin tables are that wide).
    """

    def __init__(self, d_in: int, n_head: int, n_kv_head: int, head_dim: int | None = None,
                 qkv_bias: bool = False, make_norm: Callable[[int], nn.Module] | None = None,
                 scale: float | None = None, window: int = 0, norm_all_heads: bool = False,
                 sinks: bool = False, out_bias: bool = False, output_gate: bool = False,
                 rotary_dim: int | None = None):
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be divisible by n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = head_dim or _check_heads(d_in, n_head)
        self.scale, self.window = scale, window
        self.output_gate = output_gate
        self.rotary_dim = rotary_dim if rotary_dim and rotary_dim < self.head_dim else None
        q_width = n_head * self.head_dim * (2 if output_gate else 1)
        self.q_proj = nn.Linear(d_in, q_width, bias=qkv_bias)
        self.k_proj = nn.Linear(d_in, n_kv_head * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_in, n_kv_head * self.head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(n_head * self.head_dim, d_in, bias=out_bias)
        self.sinks = nn.Parameter(torch.zeros(n_head)) if sinks else None
        self.norm_all_heads = norm_all_heads
        q_width, k_width = ((n_head * self.head_dim, n_kv_head * self.head_dim) if norm_all_heads
                            else (self.head_dim, self.head_dim))
        self.q_norm = make_norm(q_width) if make_norm else None
        self.k_norm = make_norm(k_width) if make_norm else None
        self.qkv_proj = None  # set by fuse_projections (inference)

    def fuse_projections(self) -> None:
        """Inference: compute Q, K and V in one matmul (see nn/fuse.py)."""
        if self.qkv_proj is None:
            self.qkv_proj = concat_linears([self.q_proj, self.k_proj, self.v_proj])
            del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        h, kv, d = self.n_head, self.n_kv_head, self.head_dim
        gate = None
        if self.output_gate or self.rotary_dim:
            q, k, v, gate = self._gated_qkv(x, cos, sin)
        elif self.qkv_proj is not None and self.q_norm is None:
            # fused: Q and K are neighbours in the output, so one RoPE call covers both
            qkv = self.qkv_proj(x).view(b, t, h + 2 * kv, d)  # (B, T, H + 2KV, D)
            q, k = apply_rope(qkv[:, :, : h + kv].transpose(1, 2), cos, sin).split([h, kv], dim=1)
            v = qkv[:, :, h + kv:].transpose(1, 2)  # (B, KV, T, D)
        else:
            if self.qkv_proj is None:
                q = self.q_proj(x).view(b, t, h, d)  # (B, T, H, D)
                k = self.k_proj(x).view(b, t, kv, d)  # (B, T, KV, D)
                v = self.v_proj(x).view(b, t, kv, d)
            else:
                q, k, v = self.qkv_proj(x).view(b, t, h + 2 * kv, d).split([h, kv, kv], dim=2)
            if self.q_norm is not None:  # per head (or over all heads), before RoPE
                if self.norm_all_heads:
                    q = self.q_norm(q.reshape(b, t, h * d)).view(b, t, h, d)
                    k = self.k_norm(k.reshape(b, t, kv * d)).view(b, t, kv, d)
                else:
                    q, k = self.q_norm(q), self.k_norm(k)
            q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
            k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, KV, T, D)
            v = v.transpose(1, 2)  # (B, KV, T, D)
        k, v, mask, causal = attend_cached(cache, layer, k, v, t, self.window)
        if self.sinks is not None:
            context = attention_with_sinks(q, k, v, mask, causal, self.sinks, self.scale)
        elif t == 1 and kv != h and not causal and not isinstance(mask, PackedMask):
            # one query per row: a group's query heads become queries of their key/value head,
            # so SDPA reads each cached key once instead of repeating it per query head (3x
            # faster at 8k tokens); a (B, 1, 1, S) or (1, S) mask broadcasts over the group
            context = F.scaled_dot_product_attention(
                q.view(b, kv, h // kv, d), k, v, attn_mask=mask, scale=self.scale,
            ).view(b, h, 1, d)
        else:
            context = sdpa(q, k, v, mask, causal, self.scale, enable_gqa=kv != h)
        context = context.transpose(1, 2).reshape(b, t, h * d)  # (B, T, H*D)
        if gate is not None:
            context = context * torch.sigmoid(gate)
        return step_linear(self.out_proj, context)

    def _gated_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (B, H, T, D), k and v (B, KV, T, D) roped, and the output gate (B, T, H*D) or
        None, for the ``output_gate`` / ``rotary_dim`` switches."""
        b, t, _ = x.shape
        h, kv, d = self.n_head, self.n_kv_head, self.head_dim
        qh = 2 * h if self.output_gate else h
        if self.qkv_proj is None:
            q, k, v = (step_linear(p, x) for p in (self.q_proj, self.k_proj, self.v_proj))
        else:
            q, k, v = step_linear(self.qkv_proj, x).split([qh * d, kv * d, kv * d], dim=-1)
        gate = None
        if self.output_gate:
            q, gate = q.view(b, t, h, 2 * d).chunk(2, dim=-1)  # per head: [q_h | gate_h]
            gate = gate.reshape(b, t, h * d)
        q, k, v = q.reshape(b, t, h, d), k.view(b, t, kv, d), v.view(b, t, kv, d)
        if self.q_norm is not None:
            if self.norm_all_heads:
                q = self.q_norm(q.reshape(b, t, h * d)).view(b, t, h, d)
                k = self.k_norm(k.reshape(b, t, kv * d)).view(b, t, kv, d)
            else:
                q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        r = self.rotary_dim
        if r:
            q = torch.cat([apply_rope(q[..., :r], cos, sin), q[..., r:]], dim=-1)
            k = torch.cat([apply_rope(k[..., :r], cos, sin), k[..., r:]], dim=-1)
        else:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v.transpose(1, 2), gate


def attention_with_sinks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         mask: torch.Tensor | None, causal: bool, sinks: torch.Tensor,
                         scale: float | None = None) -> torch.Tensor:
    """Attention whose softmax over the keys has one more logit per head, ``sinks[h]``, for a
    key whose value is zero (gpt-oss's attention sinks):

        weights = softmax([q.k_1 * scale, ..., q.k_S * scale, sink_h])[:S]

    so a head's weights may sum to less than one. Computed by SDPA over one extra key of zeros
    (its logit q.0 = 0) and value zeros, with a float mask that adds ``sinks[h]`` to that
    key's logit and -inf where ``mask`` (bool, True: may attend; or causal) forbids.
    q (B, H, T, D); k, v (B, KV, S, D); mask broadcastable to (B, 1, T, S) or None."""
    b, h, t, _ = q.shape
    kv, s = k.shape[1], k.shape[2]
    if isinstance(mask, PackedMask):  # the sinks need the whole row's scores
        mask = mask.dense()
    if mask is None:
        mask = (torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t) if causal
                else torch.ones(t, s, dtype=torch.bool, device=q.device))
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -torch.inf)
    bias = bias.expand(b, h, t, s)
    sink = sinks.to(q.dtype).view(1, h, 1, 1).expand(b, h, t, 1)
    bias = torch.cat([bias, sink], dim=-1)  # (B, H, T, S + 1)
    k = torch.cat([k, k.new_zeros(b, kv, 1, k.shape[3])], dim=2)
    v = torch.cat([v, v.new_zeros(b, kv, 1, v.shape[3])], dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                          scale=scale, enable_gqa=kv != h)


def layer_windows(cfg, owner: str) -> list[int]:
    """Each layer's attention window from ``cfg.sliding_window`` (0: every layer global) and
    ``cfg.sliding_window_pattern`` (0: every layer local; k: every k-th layer global, the rest
    local, e.g. Gemma 3's 6 = five local layers to one global). Errors name the field."""
    window, pattern = cfg.sliding_window, cfg.sliding_window_pattern
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"{owner}.sliding_window must be an integer >= 0, got {window!r}")
    if not isinstance(pattern, int) or pattern < 0:
        raise ValueError(f"{owner}.sliding_window_pattern must be an integer >= 0, "
                         f"got {pattern!r}")
    if pattern and not window:
        raise ValueError(f"{owner}.sliding_window_pattern={pattern} needs sliding_window > 0")
    return [0 if not window or (pattern and (i + 1) % pattern == 0) else window
            for i in range(cfg.n_layer)]


def sliding_causal_mask(t: int, window: int, device=None) -> torch.Tensor:
    """(T, T) boolean mask, True where query i may see key j: j <= i and i - j < window."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    return (j <= i) & (i - j < window)


def attend_cached(cache, layer: int, k: torch.Tensor, v: torch.Tensor, t: int, window: int = 0):
    """(keys, values, mask, is_causal) for SDPA: the cache's (``KVCache.attend``), or without
    one plain causal attention (limited to the last ``window`` positions when > 0)."""
    if cache is not None:
        return cache.attend(layer, k, v, window)
    if window and t > window:
        return k, v, sliding_causal_mask(t, window, k.device), False
    return k, v, None, True

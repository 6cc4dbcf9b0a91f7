"""Gemma 4 (text): modules only.

    token ids (B, T) -> tok_emb * sqrt(n_embd)                            (B, T, C)
      [per-layer embeddings: ple_emb(ids) * sqrt(P) and norm(ple_proj(x) / sqrt(C)),
       averaged, one (B, T, P) slice per layer]                           (B, T, L, P)
      -> n_layer x block:
             x = x + post_att_norm(att(norm1(x)))     local layers: sliding window, head 256;
                                                      global layers: head 512, proportional
                                                      RoPE on a quarter of it; q/k/v normed
             x = x + post_ff_norm(ff(norm2(x)))       GeGLU; MoE models add a routed mixture
                                                      beside it (ff_norm_1(ff) + ff_norm_2(moe))
             x = x + ple_norm(ple_out(gelu(ple_gate(x)) * ple_i))    with per-layer embeddings
             x = x * layer_scalar
      -> final_norm -> out_head, logits soft-capped at 30                 (B, T, vocab_size)

What is new against Gemma 3 (``models/gemma3.py``):
- every RMSNorm scales by ``w`` (not ``1 + w``); values are RMS-normed too (no scale), and
  attention multiplies q.k by 1 (the norms set the scale);
- global layers have their own head size (``global_head_dim``) and key/value heads
  (``n_global_kv_head``), and RoPE turns only the first quarter of their frequency pairs
  (``nn/rope.py``'s proportional RoPE); with ``k_eq_v`` their keys double as values (no
  ``v_proj``: the 26B and 31B models);
- **KV sharing**: the last ``kv_shared_layers`` layers compute no keys or values; each reads
  those of the last earlier layer of its kind (local or global), so they keep no cache either
  (the E2B and E4B models; their shared layers' FFN may be twice as wide, ``double_wide_mlp``);
- **per-layer embeddings** (PLE, ``ple_dim`` > 0): a second token table gives every layer a
  small vector of its own, gated into the residual after the FFN;
- **MoE** (the 26B-A4B): a mixture of GeGLU experts runs beside the dense FFN; its router
  normalises the residual (no scale), multiplies by a learned scale and 1/sqrt(C), and scales
  each chosen expert's gate by a learned per-expert factor.

Module names follow the Llama model where the role is the same, so LoRA targets, the engine and
the training code serve this family too; ``Gemma4.new_cache`` builds the cache the engine uses
(only the layers that compute keys hold any).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchlm.models.llama import Llama
from scratchlm.models.presets import FamilyConfig, from_preset
from scratchlm.nn.attention import attend_cached, layer_windows
from scratchlm.nn.feedforward import SwiGLU
from scratchlm.nn.init import normal_init
from scratchlm.nn.kv_cache import SlidingKVCache
from scratchlm.nn.moe import MoEConfig, MoEFeedForward, moe_from
from scratchlm.nn.native import step_linear
from scratchlm.nn.packed_attention import PackedMask, sdpa
from scratchlm.nn.norm import RMSNorm
from scratchlm.nn.rope import apply_rope
from scratchlm.nn.softcap import SoftcapLinear


@dataclass
class Gemma4Config(FamilyConfig):
    vocab_size: int = 262144
    context_length: int = 131072
    n_embd: int = 1536
    n_layer: int = 35
    n_head: int = 8
    n_kv_head: int = 1  # local layers' key/value heads
    head_dim: int = 256  # local layers' head size
    global_head_dim: int = 512  # global layers' head size
    n_global_kv_head: int = 0  # global layers' key/value heads (0: n_kv_head)
    intermediate_size: int = 6144  # GeGLU hidden width
    rope_base: float = 1_000_000.0  # global layers
    rope_local_base: float = 10_000.0  # local (sliding-window) layers
    global_rotary_factor: float = 0.25  # share of a global head's frequency pairs RoPE turns
    norm_eps: float = 1e-6
    sliding_window: int = 512  # local layers attend to the last this-many positions
    sliding_window_pattern: int = 5  # every k-th layer global (and always the last)
    final_logit_softcap: float = 30.0  # logits = cap * tanh(logits / cap); 0: none
    k_eq_v: bool = False  # global layers use their keys as values (no v_proj)
    kv_shared_layers: int = 0  # the last this-many layers reuse earlier layers' keys/values
    double_wide_mlp: bool = False  # the KV-shared layers' FFN is twice as wide
    ple_dim: int = 0  # per-layer embedding width (0: none)
    ple_vocab_size: int = 262144  # rows of the per-layer embedding table
    tie_embeddings: bool = True
    grad_checkpointing: bool = False
    # MoE models: a routed mixture of GeGLU experts beside the dense FFN in every layer
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self):
        owner = type(self).__name__
        self.check_attention_shape()
        self.check_positive("global_head_dim")
        if self.global_head_dim % 2:
            raise ValueError(f"{owner}.global_head_dim must be even, got {self.global_head_dim}")
        if not isinstance(self.n_global_kv_head, int) or self.n_global_kv_head < 0 or (
                self.n_head % self.global_kv_heads):
            raise ValueError(f"{owner}.n_global_kv_head must be 0 or divide n_head "
                             f"({self.n_head}), got {self.n_global_kv_head!r}")
        if not 0 < self.global_rotary_factor <= 1:
            raise ValueError(f"{owner}.global_rotary_factor must be in (0, 1], "
                             f"got {self.global_rotary_factor!r}")
        if self.final_logit_softcap < 0:
            raise ValueError(f"{owner}.final_logit_softcap must be >= 0 (0: none), "
                             f"got {self.final_logit_softcap!r}")
        if not isinstance(self.ple_dim, int) or self.ple_dim < 0:
            raise ValueError(f"{owner}.ple_dim must be an integer >= 0, got {self.ple_dim!r}")
        if self.ple_dim:
            self.check_positive("ple_vocab_size")
        if not isinstance(self.kv_shared_layers, int) or not (
                0 <= self.kv_shared_layers < self.n_layer):
            raise ValueError(f"{owner}.kv_shared_layers must be in [0, n_layer), "
                             f"got {self.kv_shared_layers!r}")
        self.moe = moe_from(self.moe, owner)
        if (self.moe.shared_expert_size or self.moe.router_bias or self.moe.capacity_factor
                or not self.moe.norm_topk_prob):
            raise ValueError(f"{owner}.moe: Gemma 4's mixture renormalises its top-k gates and "
                             "has no shared expert, router bias or expert capacity")
        self.kv_sources  # raises when a shared layer has no earlier layer of its kind

    @property
    def global_kv_heads(self) -> int:
        return self.n_global_kv_head or self.n_kv_head

    @property
    def windows(self) -> list[int]:
        """Each layer's attention window: ``sliding_window`` for local layers, 0 for global
        ones (every ``sliding_window_pattern``-th, and the last)."""
        w = layer_windows(self, type(self).__name__)
        return w[:-1] + [0]

    @property
    def kv_sources(self) -> list[int | None]:
        """For each layer, None when it computes its own keys and values, else the layer whose
        keys and values it reads: the last layer of its kind before the shared ones."""
        first = self.n_layer - self.kv_shared_layers
        windows = self.windows
        last = {bool(windows[j]): j for j in range(first)}  # the last owner of each kind
        out: list[int | None] = [None] * first
        for i in range(first, self.n_layer):
            local = bool(windows[i])
            if local not in last:
                raise ValueError(f"{type(self).__name__}.kv_shared_layers: shared layer {i} "
                                 f"({'local' if local else 'global'}) has no earlier layer "
                                 "of its kind to read keys and values from")
            out.append(last[local])
        return out

    @classmethod
    def from_name(cls, name: str, **overrides) -> "Gemma4Config":
        return from_preset(GEMMA4_PRESETS, name, "Gemma 4", **overrides)


GEMMA4_PRESETS: dict[str, Gemma4Config] = {
    # https://huggingface.co/google/gemma-4-E2B and -E4B (config.json, text_config): per-layer
    # embeddings of 256, the last 20 (18) layers share keys and values
    "gemma4-e2b": Gemma4Config(n_embd=1536, n_layer=35, n_head=8, n_kv_head=1,
                               intermediate_size=6144, sliding_window_pattern=5, ple_dim=256,
                               kv_shared_layers=20, double_wide_mlp=True),
    "gemma4-e4b": Gemma4Config(n_embd=2560, n_layer=42, n_head=8, n_kv_head=2,
                               intermediate_size=10240, sliding_window_pattern=6, ple_dim=256,
                               kv_shared_layers=18),
    # https://huggingface.co/google/gemma-4-26B-A4B and -31B (text_config): window 1024, keys
    # as values on the global layers; the 26B has 128 experts of width 704 (top 8) beside a
    # dense FFN of 2112
    "gemma4-26b-a4b": Gemma4Config(context_length=262144, n_embd=2816, n_layer=30, n_head=16,
                                   n_kv_head=8, n_global_kv_head=2, intermediate_size=2112,
                                   sliding_window=1024, sliding_window_pattern=6, k_eq_v=True,
                                   moe=MoEConfig(num_experts=128, top_k=8,
                                                 intermediate_size=704)),
    "gemma4-31b": Gemma4Config(context_length=262144, n_embd=5376, n_layer=60, n_head=32,
                               n_kv_head=16, n_global_kv_head=4, intermediate_size=21504,
                               sliding_window=1024, sliding_window_pattern=6, k_eq_v=True),
    # tiny, for tests: layers 0, 1, 3 local (window 8), 2 and 4 global; 3 and 4 share keys
    "gemma4-tiny": Gemma4Config(vocab_size=512, context_length=256, n_embd=64, n_layer=5,
                                n_head=4, n_kv_head=2, head_dim=32, global_head_dim=64,
                                n_global_kv_head=1, intermediate_size=128, sliding_window=8,
                                sliding_window_pattern=3, ple_dim=16, ple_vocab_size=512,
                                kv_shared_layers=2, double_wide_mlp=True),
}


class Gemma4Attention(nn.Module):
    """GQA with RMS-normed queries, keys and values (values without a scale) and q.k unscaled.

    A KV-shared layer (``computes_kv=False``) has only ``q_proj``, ``q_norm`` and ``out_proj``:
    its ``forward`` takes ``shared``, what the source layer's ``forward`` returned beside its
    output (keys, values, mask, is_causal), and attends to those."""

    def __init__(self, d_in: int, n_head: int, n_kv_head: int, head_dim: int, eps: float,
                 window: int = 0, k_eq_v: bool = False, computes_kv: bool = True):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.window = window
        self.q_proj = nn.Linear(d_in, n_head * head_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        if computes_kv:
            self.k_proj = nn.Linear(d_in, n_kv_head * head_dim, bias=False)
            if not k_eq_v:
                self.v_proj = nn.Linear(d_in, n_kv_head * head_dim, bias=False)
            self.k_norm = RMSNorm(head_dim, eps)
            self.v_norm = RMSNorm(head_dim, eps, scale=False)
        self.out_proj = nn.Linear(n_head * head_dim, d_in, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0, shared: tuple | None = None):
        """x (B, T, C) -> ((B, T, C), (keys, values, mask, is_causal)); ``layer`` is this
        layer's index in the cache."""
        b, t, _ = x.shape
        h, kv, d = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_norm(step_linear(self.q_proj, x).view(b, t, h, d))  # (B, T, H, D)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
        if shared is None:
            k = step_linear(self.k_proj, x).view(b, t, kv, d)  # (B, T, KV, D)
            v = k if not hasattr(self, "v_proj") else step_linear(self.v_proj, x).view(b, t, kv, d)
            k = apply_rope(self.k_norm(k).transpose(1, 2), cos, sin)  # (B, KV, T, D)
            v = self.v_norm(v).transpose(1, 2)  # (B, KV, T, D)
            shared = attend_cached(cache, layer, k, v, t, self.window)
        k, v, mask, causal = shared
        if t == 1 and kv != h and not causal and not isinstance(mask, PackedMask):
            # a decode step: each key read once per group
            context = F.scaled_dot_product_attention(
                q.view(b, kv, h // kv, d), k, v, attn_mask=mask, scale=1.0).view(b, h, 1, d)
        else:
            context = sdpa(q, k, v, mask, causal, 1.0, enable_gqa=kv != h)
        context = context.transpose(1, 2).reshape(b, t, h * d)  # (B, T, H*D)
        return step_linear(self.out_proj, context), shared


class Gemma4MoE(MoEFeedForward):
    """The mixture beside the dense FFN: routes the residual through its own scale-free RMS
    norm, times ``router_scale`` and 1/sqrt(C); each chosen expert's renormalised gate is then
    multiplied by ``expert_scale[e]``."""

    def __init__(self, cfg: Gemma4Config):
        moe, c = cfg.moe, cfg.n_embd
        super().__init__(c, moe.num_experts, moe.top_k,
                         lambda: SwiGLU(c, moe.intermediate_size or cfg.intermediate_size,
                                        act="gelu_tanh"),
                         aux_loss_coef=moe.aux_loss_coef, z_loss_coef=moe.z_loss_coef,
                         norm_topk_prob=moe.norm_topk_prob)
        self.route_norm = RMSNorm(c, cfg.norm_eps, scale=False)
        self.router_scale = nn.Parameter(torch.ones(c))
        self.expert_scale = nn.Parameter(torch.ones(moe.num_experts))

    def route(self, x: torch.Tensor):
        h = self.route_norm(x) * self.router_scale * x.shape[-1] ** -0.5
        logits, gates, idx = super().route(h)
        return logits, gates * self.expert_scale[idx], idx


class Gemma4Block(nn.Module):
    """One layer; ``window`` > 0: a local layer; ``shared``: it reads another layer's keys."""

    def __init__(self, cfg: Gemma4Config, window: int, shared: bool):
        super().__init__()

        def norm(dim: int) -> RMSNorm:
            return RMSNorm(dim, cfg.norm_eps)

        c = cfg.n_embd
        self.norm1 = norm(c)
        self.att = Gemma4Attention(
            c, cfg.n_head, cfg.n_kv_head if window else cfg.global_kv_heads,
            cfg.head_dim if window else cfg.global_head_dim, cfg.norm_eps, window,
            k_eq_v=cfg.k_eq_v and not window, computes_kv=not shared)
        self.post_att_norm = norm(c)
        self.norm2 = norm(c)
        wide = 2 if cfg.double_wide_mlp and shared else 1
        self.ff = SwiGLU(c, cfg.intermediate_size * wide, act="gelu_tanh")
        self.post_ff_norm = norm(c)
        if cfg.moe.num_experts:
            self.moe = Gemma4MoE(cfg)
            self.moe_norm = norm(c)  # the experts' input norm
            self.post_ff_norm_1 = norm(c)  # the dense FFN's output
            self.post_ff_norm_2 = norm(c)  # the mixture's output
        if cfg.ple_dim:
            self.ple_gate = nn.Linear(c, cfg.ple_dim, bias=False)
            self.ple_out = nn.Linear(cfg.ple_dim, c, bias=False)
            self.ple_norm = norm(c)
        self.register_buffer("layer_scalar", torch.ones(1))  # a constant of the checkpoint

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0, ple: torch.Tensor | None = None, shared: tuple | None = None):
        """x (B, T, C), ple (B, T, P) or None -> ((B, T, C), this layer's keys/values)."""
        h, kv = self.att(self.norm1(x), cos, sin, cache, layer, shared)
        x = x + self.post_att_norm(h)
        h = self.ff(self.norm2(x))
        if hasattr(self, "moe"):
            h = self.post_ff_norm_1(h) + self.post_ff_norm_2(self.moe(self.moe_norm(x), x))
        x = x + self.post_ff_norm(h)
        if ple is not None:
            g = F.gelu(step_linear(self.ple_gate, x), approximate="tanh") * ple  # (B, T, P)
            x = x + self.ple_norm(step_linear(self.ple_out, g))
        return x * self.layer_scalar, kv


class Gemma4(Llama):
    def __init__(self, cfg: Gemma4Config):
        super().__init__(cfg)
        if cfg.final_logit_softcap:
            self.out_head = SoftcapLinear(cfg.n_embd, cfg.vocab_size, cfg.final_logit_softcap)
            if cfg.tie_embeddings:
                self.out_head.weight = self.tok_emb.weight
            else:
                normal_init(self.out_head)
        if cfg.ple_dim:
            width = cfg.n_layer * cfg.ple_dim
            self.ple_emb = nn.Embedding(cfg.ple_vocab_size, width)
            self.ple_proj = nn.Linear(cfg.n_embd, width, bias=False)
            self.ple_norm = RMSNorm(cfg.ple_dim, cfg.norm_eps)
            for m in (self.ple_emb, self.ple_proj):
                normal_init(m)
        # the cache holds the layers that compute keys: layer i -> its index there
        owners = [i for i, s in enumerate(self.kv_sources) if s is None]
        self.cache_layer = {i: n for n, i in enumerate(owners)}

    def make_blocks(self, cfg: Gemma4Config) -> nn.ModuleList:
        # each layer's window and key source, worked out once (not per block or per step)
        self.windows, self.kv_sources = cfg.windows, cfg.kv_sources
        return nn.ModuleList(Gemma4Block(cfg, w, s is not None)
                             for w, s in zip(self.windows, self.kv_sources))

    def embed(self, in_idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(in_idx)  # (B, T, C)
        return x * torch.tensor(self.cfg.n_embd ** 0.5, dtype=x.dtype)

    def rope_tables(self, length: int, device: torch.device):
        cfg = self.cfg
        proportional = {"type": "proportional", "partial_rotary_factor": cfg.global_rotary_factor}
        return [self.rope(length, device, cfg.rope_local_base, None, cfg.head_dim),
                self.rope(length, device, cfg.rope_base, proportional, cfg.global_head_dim)]

    @property
    def rope_index(self) -> list[int]:
        """0 (the local table) for sliding-window layers, 1 for global ones."""
        return [0 if w else 1 for w in self.windows]

    def per_layer_inputs(self, x: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:
        """(B, P + T, C) embedded inputs, (B, T) ids -> (B, P + T, L, ple_dim): the projection
        of the embeddings, normed, averaged with the token's own per-layer embedding. Prefix
        positions (prompt tuning) have no token, so only the projection, as transformers does
        for inputs given as embeddings."""
        cfg = self.cfg
        b, t = x.shape[:2]
        proj = step_linear(self.ple_proj, x) * cfg.n_embd ** -0.5  # (B, P + T, L * ple_dim)
        proj = self.ple_norm(proj.view(b, t, cfg.n_layer, cfg.ple_dim))
        tok = self.ple_emb(in_idx)  # (B, T, L * ple_dim)
        tok = tok * torch.tensor(cfg.ple_dim ** 0.5, dtype=tok.dtype)
        tok = tok.view(*in_idx.shape, cfg.n_layer, cfg.ple_dim)
        n_prefix = t - in_idx.shape[1]
        mixed = (proj[:, n_prefix:] + tok) * 2 ** -0.5
        return torch.cat([proj[:, :n_prefix], mixed], dim=1) if n_prefix else mixed

    def run_blocks(self, x: torch.Tensor, tables: list, cache, in_idx: torch.Tensor,
                   last: int = 0) -> torch.Tensor:
        ple = self.per_layer_inputs(x, in_idx) if self.cfg.ple_dim else None
        produced: dict[int, tuple] = {}  # layer -> its keys/values, for the layers sharing them
        sources = self.kv_sources
        first_shared = self.cfg.n_layer - self.cfg.kv_shared_layers
        for i, (block, t) in enumerate(zip(self.trf_blocks, self.rope_index)):
            if i == first_shared and 0 < last < x.shape[1]:
                # the shared layers write no keys: positions the caller does not want need
                # not go through them (a 512-token prompt's first token: 20 of E2B's 35 layers
                # for one position, not 512)
                x, ple, tables, produced = _last_positions(last, x, ple, tables, produced)
            cos, sin = tables[t]
            args = (x, cos, sin, cache, self.cache_layer.get(i, 0),
                    None if ple is None else ple[:, :, i],
                    None if sources[i] is None else produced[sources[i]])
            if self.cfg.grad_checkpointing and torch.is_grad_enabled():
                x, kv = checkpoint(block, *args, use_reentrant=False)
            else:
                x, kv = block(*args)
            if sources[i] is None and i in sources:
                produced[i] = kv
        return x

    def new_cache(self, batch: int, length: int, dtype: torch.dtype, device: torch.device,
                  pad: torch.Tensor | None = None, capacity: int | None = None):
        """A cache for the layers that compute keys and values (KV-shared layers read their
        source's): local layers' in rings of their window, global layers' whole."""
        cfg = self.cfg
        windows = [w for w, s in zip(self.windows, self.kv_sources) if s is None]
        return SlidingKVCache(windows, batch, cfg.global_kv_heads, length, cfg.global_head_dim,
                              dtype, device, pad, capacity,
                              local_shape=(cfg.n_kv_head, cfg.head_dim))


def _last_positions(n: int, x: torch.Tensor, ple: torch.Tensor | None, tables: list,
                    produced: dict) -> tuple:
    """The forward's state cut to its last ``n`` query positions: states (B, T, C), per-layer
    inputs (B, T, L, P), RoPE tables ((T, D) or (B, 1, T, D)) and the shared keys' masks;
    keys and values stay whole."""
    t = x.shape[1]
    tables = [(cos[..., -n:, :], sin[..., -n:, :]) for cos, sin in tables]
    cut = {}
    for i, (k, v, mask, causal) in produced.items():
        if mask is None and causal:  # plain causal over S keys: the last n rows of it
            s = k.shape[2]
            mask = torch.ones(n, s, dtype=torch.bool, device=k.device).tril(s - n)
        elif mask is not None:  # (pieces of packed rows: as one mask, then cut)
            mask = (mask.dense() if isinstance(mask, PackedMask) else mask)[..., -n:, :]
        cut[i] = (k, v, mask, False)
    return x[:, -n:], None if ple is None else ple[:, t - n:], tables, cut

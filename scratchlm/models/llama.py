"""Llama-family models (Llama 3.x, SmolLM2, and Qwen3 through its switches): modules only.

    token ids (B, T) -> tok_emb                                     (B, T, C)
      -> n_layer x block:  x = x + att(norm1(x), rope)   RMSNorm, grouped-query attention
                           x = x + ff(norm2(x))          SwiGLU
      -> final_norm -> out_head                                     (B, T, vocab_size)

Positions enter only through the rotary embedding inside attention (no position table).
Module names match the GPT model where the role is the same (tok_emb, trf_blocks, norm1/2, att,
ff, final_norm, out_head), so training code serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchlm.models.gpt import check_prefix
from scratchlm.models.presets import FamilyConfig, from_preset
from scratchlm.nn.attention import GroupedQueryAttention, layer_windows
from scratchlm.nn.feedforward import SwiGLU
from scratchlm.nn.init import normal_init
from scratchlm.nn.moe import MoEConfig, expert_ffn, moe_from
from scratchlm.nn.norm import RMSNorm
from scratchlm.nn.rope import rope_cache


@dataclass
class LlamaConfig(FamilyConfig):
    vocab_size: int = 32000
    context_length: int = 2048  # longest sequence (RoPE tables are built up to it lazily)
    n_embd: int = 2048
    n_layer: int = 16
    n_head: int = 32
    n_kv_head: int = 8  # key/value heads shared by groups of query heads (GQA)
    intermediate_size: int = 8192  # SwiGLU hidden width
    head_dim: int | None = None  # default n_embd // n_head
    rope_base: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3.x: factor, low/high_freq_factor, original_context_length
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each query/key head before RoPE (Qwen3)
    sliding_window: int = 0  # > 0: local layers attend to the last this-many positions
    sliding_window_pattern: int = 0  # 0: all layers local; k: every k-th layer global
    grad_checkpointing: bool = False
    moe: MoEConfig = field(default_factory=MoEConfig)  # mixture-of-experts FFNs (nn/moe.py)

    def __post_init__(self):
        owner = type(self).__name__
        self.check_attention_shape()
        if self.rope_scaling is not None:
            need = {"factor", "low_freq_factor", "high_freq_factor", "original_context_length"}
            if set(self.rope_scaling) != need:
                raise ValueError(f"{owner}.rope_scaling needs exactly {sorted(need)}")
        self.moe = moe_from(self.moe, owner)
        layer_windows(self, owner)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "LlamaConfig":
        return from_preset(LLAMA_PRESETS, name, "Llama", **overrides)


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    # https://huggingface.co/HuggingFaceTB/SmolLM2-135M (config.json)
    "smollm2-135m": LlamaConfig(vocab_size=49152, context_length=8192, n_embd=576, n_layer=30,
                                n_head=9, n_kv_head=3, intermediate_size=1536,
                                rope_base=100000.0, tie_embeddings=True),
    # https://huggingface.co/meta-llama/Llama-3.2-1B (config.json)
    "llama-3.2-1b": LlamaConfig(vocab_size=128256, context_length=131072, n_embd=2048,
                                n_layer=16, n_head=32, n_kv_head=8, intermediate_size=8192,
                                rope_base=500000.0, tie_embeddings=True,
                                rope_scaling={"factor": 32.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0,
                                              "original_context_length": 8192}),
    # tiny, for tests
    "llama-tiny": LlamaConfig(vocab_size=512, context_length=128, n_embd=64, n_layer=2,
                              n_head=4, n_kv_head=2, intermediate_size=128),
}


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig, window: int = 0):
        super().__init__()
        self.norm1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.att = GroupedQueryAttention(
            cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.qkv_bias,
            make_norm=(lambda d: RMSNorm(d, cfg.norm_eps)) if cfg.qk_norm else None,
            window=window)
        self.norm2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.ff = expert_ffn(cfg, lambda width: SwiGLU(cfg.n_embd, width or cfg.intermediate_size))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.att(self.norm1(x), cos, sin, cache, layer)  # (B, T, C)
        return x + self.ff(self.norm2(x))


class Llama(nn.Module):
    block_cls = LlamaBlock  # a family whose skeleton is Llama's names its own block here
    unit_offset_norm = False  # Gemma's final RMSNorm scales by 1 + w

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.trf_blocks = self.make_blocks(cfg)
        self.final_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, unit_offset=self.unit_offset_norm)
        self.out_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight
        self.apply(normal_init)  # as HF's initializer_range 0.02: trainable from scratch
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_blocks(self, cfg) -> nn.ModuleList:
        """The blocks: ``block_cls`` with each layer's attention window."""
        return nn.ModuleList(self.block_cls(cfg, w)
                             for w in layer_windows(cfg, type(cfg).__name__))

    @property
    def rope_dim(self) -> int:
        """The width of the RoPE tables: the dimensions of a head that RoPE turns."""
        return self.cfg.head_dim

    def rope(self, length: int, device: torch.device, base: float | None = None,
             scaling: dict | None = None, dim: int | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables covering positions [0, length) (for ``base``, default the config's;
        ``dim`` wide, default ``rope_dim``), computed once and reused."""
        if base is None:
            base, scaling = self.cfg.rope_base, self.cfg.rope_scaling
        dim = dim or self.rope_dim
        key = (base, repr(scaling), dim)
        table = self._rope.get(key)
        if table is None or table[0].shape[0] < length or table[0].device != device:
            n = min(self.cfg.context_length, max(length, 1024))
            # A table built while generating (inference mode) must still serve training, as
            # GRPO trains right after sampling: never an inference tensor.
            with torch.inference_mode(False):
                table = self._rope[key] = rope_cache(dim, n, base, scaling, device)
        return table

    def rope_tables(self, length: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The RoPE tables the blocks use; block i takes ``[self.rope_index[i]]`` (one table
        here; Gemma 3 has one for local and one for global layers)."""
        return [self.rope(length, device)]

    @property
    def rope_index(self) -> list[int]:
        return [0] * len(self.trf_blocks)

    def embed(self, in_idx: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, C) token embeddings (Gemma scales them)."""
        return self.tok_emb(in_idx)

    def forward(self, in_idx: torch.Tensor, cache=None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits; with a ``KVCache`` the ids continue
        the cached sequence."""
        return self.out_head(self.hidden_states(in_idx, cache))

    def hidden_states(self, in_idx: torch.Tensor, cache=None,
                      prefix: torch.Tensor | None = None, last: int = 0) -> torch.Tensor:
        """(B, T) -> (B, T, C) final-normed states (the input of ``out_head``); ``prefix``
        (P, C) and ``last`` as in ``GPT.hidden_states``."""
        n_prefix = check_prefix(prefix, cache)
        seq_len = in_idx.shape[1] + n_prefix
        total = seq_len + (cache.length if cache is not None else 0)
        if total > self.cfg.context_length:
            raise ValueError(f"sequence of {total} tokens exceeds context_length "
                             f"{self.cfg.context_length}")
        pos = cache.positions(seq_len) if cache is not None else None  # (B, T)
        tables = []
        for cos, sin in self.rope_tables(total, in_idx.device):  # each (L, D)
            if pos is None:
                tables.append((cos[:seq_len], sin[:seq_len]))  # (T, D)
            else:
                tables.append((cos[pos][:, None], sin[pos][:, None]))  # (B, 1, T, D)
        x = self.embed(in_idx)  # (B, T, C)
        if n_prefix:
            x = torch.cat([prefix.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = self.run_blocks(x, tables, cache, in_idx, last)
        if cache is not None:
            cache.advance(seq_len)
        keep = seq_len - n_prefix if not last else min(last, seq_len - n_prefix)
        return self.final_norm(x[:, x.shape[1] - keep:])

    def run_blocks(self, x: torch.Tensor, tables: list, cache, in_idx: torch.Tensor,
                   last: int = 0) -> torch.Tensor:
        """(B, P + T, C) -> (B, P + T, C) through every block, each with its RoPE table
        (``in_idx`` (B, T), the token ids of the last T positions, is for families whose
        blocks also read them: Gemma 4's per-layer embeddings). With ``last`` > 0 a family
        may return only the last ``last`` positions (at most T), when it can skip work for
        the others (Gemma 4's KV-shared layers)."""
        for i, (block, t) in enumerate(zip(self.trf_blocks, self.rope_index)):
            cos, sin = tables[t]
            if self.cfg.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, cache, i, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, i)
        return x

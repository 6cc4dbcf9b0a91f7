"""Llama-family models (Llama 3.x, SmolLM2, ...): modules only.

    token ids (B, T) -> tok_emb                                     (B, T, C)
      -> n_layer x block:  x = x + att(norm1(x), rope)   RMSNorm, grouped-query attention
                           x = x + ff(norm2(x))          SwiGLU
      -> final_norm -> out_head                                     (B, T, vocab_size)

Positions enter only through the rotary embedding inside attention (no position table).
Module names match the GPT model where the role is the same (tok_emb, trf_blocks, norm1/2, att,
ff, final_norm, out_head), so training code serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchlm.models.gpt import check_prefix
from scratchlm.nn.attention import GroupedQueryAttention
from scratchlm.nn.feedforward import SwiGLU
from scratchlm.nn.moe import check_moe_config, expert_ffn
from scratchlm.nn.norm import RMSNorm
from scratchlm.nn.rope import rope_cache


@dataclass
class LlamaConfig:
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
    grad_checkpointing: bool = False
    moe_num_experts: int = 0  # > 0: each block's FFN is a mixture of this many experts
    moe_top_k: int = 2  # experts per token
    moe_capacity_factor: float = 0.0  # > 0: cap tokens per expert (overflow is dropped)
    moe_aux_loss_coef: float = 0.01  # Switch load-balancing loss weight
    moe_z_loss_coef: float = 0.001  # router z-loss weight

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "n_embd", "n_layer", "n_head", "n_kv_head",
                     "intermediate_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, "
                                 f"got {getattr(self, name)!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig.n_head ({self.n_head}) must be divisible by "
                             f"n_kv_head ({self.n_kv_head})")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"LlamaConfig.n_embd ({self.n_embd}) must be divisible by "
                                 f"n_head ({self.n_head}) when head_dim is not given")
            self.head_dim = self.n_embd // self.n_head
        if self.rope_scaling is not None:
            need = {"factor", "low_freq_factor", "high_freq_factor", "original_context_length"}
            if set(self.rope_scaling) != need:
                raise ValueError(f"LlamaConfig.rope_scaling needs exactly {sorted(need)}")
        check_moe_config(self, "LlamaConfig")

    @property
    def padded_vocab_size(self) -> int:
        return self.vocab_size

    @classmethod
    def from_name(cls, name: str, **overrides) -> "LlamaConfig":
        try:
            base = LLAMA_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown Llama preset {name!r}; known: {', '.join(LLAMA_PRESETS)}") from None
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.att = GroupedQueryAttention(cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim,
                                         cfg.qkv_bias)
        self.norm2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.ff = expert_ffn(cfg, lambda: SwiGLU(cfg.n_embd, cfg.intermediate_size))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.att(self.norm1(x), cos, sin, cache, layer)  # (B, T, C)
        return x + self.ff(self.norm2(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.trf_blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layer))
        self.final_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def rope(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables covering positions [0, length), computed once and reused."""
        if self._rope is None or self._rope[0].shape[0] < length or self._rope[0].device != device:
            n = min(self.cfg.context_length, max(length, 1024))
            self._rope = rope_cache(self.cfg.head_dim, n, self.cfg.rope_base,
                                    self.cfg.rope_scaling, device)
        return self._rope

    def forward(self, in_idx: torch.Tensor, cache=None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits; with a ``KVCache`` the ids continue
        the cached sequence."""
        return self.out_head(self.hidden_states(in_idx, cache))

    def hidden_states(self, in_idx: torch.Tensor, cache=None,
                      prefix: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> (B, T, C) final-normed states (the input of ``out_head``); ``prefix``
        (P, C) as in ``GPT.hidden_states``."""
        n_prefix = check_prefix(prefix, cache)
        seq_len = in_idx.shape[1] + n_prefix
        total = seq_len + (cache.length if cache is not None else 0)
        if total > self.cfg.context_length:
            raise ValueError(f"sequence of {total} tokens exceeds context_length "
                             f"{self.cfg.context_length}")
        cos, sin = self.rope(total, in_idx.device)  # (L, D)
        if cache is None:
            cos, sin = cos[:seq_len], sin[:seq_len]  # (T, D)
        else:
            pos = cache.positions(seq_len)  # (B, T)
            cos, sin = cos[pos][:, None], sin[pos][:, None]  # (B, 1, T, D)
        x = self.tok_emb(in_idx)  # (B, T, C)
        if n_prefix:
            x = torch.cat([prefix.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        for i, block in enumerate(self.trf_blocks):
            if self.cfg.grad_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.advance(seq_len)
        return self.final_norm(x[:, n_prefix:])

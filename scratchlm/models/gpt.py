"""The GPT model of the book's chapter 4 (GPT-2's architecture): modules only.

    token ids (B, T)
      -> tok_emb + pos_emb -> dropout                       (B, T, C)
      -> n_layer x TransformerBlock:
             x = x + drop(att(norm1(x)))                     pre-LayerNorm, shortcut
             x = x + drop(ff(norm2(x)))
      -> final_norm -> out_head                              (B, T, vocab_size)

Loading weights lives in ``models/convert`` and ``checkpoints/``; counting parameters and
FLOPs in ``models/accounting.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchlm.models.presets import FamilyConfig, from_preset
from scratchlm.nn.attention import CausalSelfAttention, layer_windows
from scratchlm.nn.feedforward import FeedForward
from scratchlm.nn.init import normal_init
from scratchlm.nn.moe import MoEConfig, expert_ffn, moe_from
from scratchlm.nn.norm import LayerNorm


@dataclass
class GPTConfig(FamilyConfig):
    vocab_size: int = 50257  # GPT-2's BPE vocabulary
    context_length: int = 1024  # longest sequence the positional embedding covers
    n_embd: int = 768  # embedding width C
    n_head: int = 12  # attention heads (C must divide evenly)
    n_layer: int = 12  # transformer blocks
    drop_rate: float = 0.0  # dropout on embeddings, attention weights and shortcuts
    qkv_bias: bool = True  # bias in the query/key/value projection (GPT-2 has one)
    tie_embeddings: bool = True  # out_head shares tok_emb's weight (GPT-2 does)
    vocab_pad_multiple: int = 1  # pad embedding/head rows to a multiple (64 helps matmuls)
    grad_checkpointing: bool = False  # recompute each block's activations in backward
    init: str = "gpt2"  # "gpt2": normal(0, 0.02) weights; "torch": PyTorch defaults (the book)
    sliding_window: int = 0  # > 0: local layers attend to the last this-many positions
    sliding_window_pattern: int = 0  # 0: all layers local; k: every k-th layer global
    moe: MoEConfig = field(default_factory=MoEConfig)  # mixture-of-experts FFNs (nn/moe.py)

    def __post_init__(self):
        self.check_positive("vocab_size", "context_length", "n_embd", "n_head", "n_layer",
                            "vocab_pad_multiple")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head "
                             f"({self.n_head})")
        if self.init not in ("gpt2", "torch"):
            raise ValueError(f"GPTConfig.init must be 'gpt2' or 'torch', got {self.init!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate}")
        self.moe = moe_from(self.moe, "GPTConfig")
        layer_windows(self, "GPTConfig")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """The vocabulary rounded up to a multiple of ``vocab_pad_multiple``."""
        m = self.vocab_pad_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_name(cls, name: str, **overrides) -> "GPTConfig":
        """A preset by name, e.g. ``GPTConfig.from_name("gpt2-124m", drop_rate=0.1)``."""
        return from_preset(GPT_PRESETS, name, "GPT", **overrides)


# The four GPT-2 sizes (the book's table in chapter 5; OpenAI's released checkpoints:
# https://huggingface.co/openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl).
GPT_PRESETS: dict[str, GPTConfig] = {
    "gpt2-124m": GPTConfig(n_embd=768, n_layer=12, n_head=12),
    "gpt2-355m": GPTConfig(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-774m": GPTConfig(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-1558m": GPTConfig(n_embd=1600, n_layer=48, n_head=25),
    # tiny, for tests and quick experiments
    "gpt-tiny": GPTConfig(vocab_size=50257, context_length=128, n_embd=32, n_layer=2, n_head=2),
}


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, window: int = 0):
        super().__init__()
        self.norm1 = LayerNorm(cfg.n_embd)
        self.att = CausalSelfAttention(cfg.n_embd, cfg.n_embd, cfg.context_length,
                                       cfg.drop_rate, cfg.n_head, cfg.qkv_bias)
        self.norm2 = LayerNorm(cfg.n_embd)
        self.att.window = window
        self.ff = expert_ffn(cfg, lambda width: FeedForward(cfg.n_embd, width))
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, layer))  # (B, T, C)
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))  # (B, T, C)
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.n_embd)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg, w)
                                        for w in layer_windows(cfg, "GPTConfig"))
        self.final_norm = LayerNorm(cfg.n_embd)
        self.out_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight
        if cfg.init == "gpt2":
            self.apply(normal_init)

    def forward(self, in_idx: torch.Tensor, cache=None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits. With a ``KVCache`` (nn/kv_cache.py)
        the ids continue the cached sequence."""
        logits = self.out_head(self.hidden_states(in_idx, cache))  # (B, T, padded V)
        if self.cfg.padded_vocab_size != self.cfg.vocab_size:
            logits = logits[..., : self.cfg.vocab_size]  # drop the padding columns
        return logits

    def hidden_states(self, in_idx: torch.Tensor, cache=None,
                      prefix: torch.Tensor | None = None, last: int = 0) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) final-normed states, the input of ``out_head``
        (a loss can fuse the head with cross-entropy; see ``nn/loss.py``). ``prefix`` (P, C):
        embeddings placed before the tokens (soft prompts, ``finetune/prompt_tuning.py``);
        their own states are left out of the output. ``last`` > 0: only the last ``last``
        positions' states (the engine's last-token logits; a family may skip work for the
        others)."""
        b, seq_len = in_idx.shape
        n_prefix = check_prefix(prefix, cache)
        seq_len += n_prefix
        total = seq_len + (cache.length if cache is not None else 0)
        if total > self.cfg.context_length:
            raise ValueError(f"sequence of {total} tokens exceeds context_length "
                             f"{self.cfg.context_length}")
        if cache is None:
            pos = torch.arange(seq_len, device=in_idx.device)  # (T,)
        else:
            pos = cache.positions(seq_len)  # (B, T): each row counts from its first real token
        # With a tied head, the lookup's gradient is made sparse: it then lands in the head's
        # dense gradient by index, instead of a zero-filled (V, C) tensor added to it (about
        # 10% of a gpt2-124m CPU training step). Untied, or compiled (inductor has no sparse
        # tensors), the gradient stays dense.
        sparse = (self.training and getattr(self.out_head, "weight", None) is self.tok_emb.weight
                  and not torch.compiler.is_compiling())
        tok = F.embedding(in_idx, self.tok_emb.weight, sparse=sparse)
        if n_prefix:
            tok = torch.cat([prefix.to(tok.dtype).expand(b, -1, -1), tok], dim=1)  # (B, P+T, C)
        x = self.drop_emb(tok + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.trf_blocks):
            if self.cfg.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cache, i, use_reentrant=False)
            else:
                x = block(x, cache, i)
        if cache is not None:
            cache.advance(seq_len)
        x = x[:, n_prefix:]
        return self.final_norm(x[:, -last:] if last else x)


def check_prefix(prefix: torch.Tensor | None, cache) -> int:
    """Length of a soft-prompt prefix (0 without one); it is not combined with a KV cache."""
    if prefix is None:
        return 0
    if cache is not None:
        raise ValueError("a soft-prompt prefix is not supported with a KV cache")
    if prefix.dim() != 2:
        raise ValueError(f"prefix must be (P, C), got shape {tuple(prefix.shape)}")
    return prefix.shape[0]

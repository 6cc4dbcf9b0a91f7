"""Qwen3.5 (text): a hybrid of Gated DeltaNet linear attention and gated full attention.

    token ids (B, T) -> tok_emb                                      (B, T, C)
      -> n_layer x block:
             x = x + mixer(norm1(x))     three of every four layers: Gated DeltaNet
                                         (nn/gated_deltanet.py; a fixed-size state, no KV);
                                         every fourth: GQA with q/k norms, RoPE on the first
                                         quarter of each head, and an output gate
             x = x + ff(norm2(x))        SwiGLU (MoE models: routed experts and a gated
                                         shared expert, ``nn/moe.py``)
      -> final_norm -> out_head                                      (B, T, vocab_size)

What is new against Qwen3: the linear-attention layers (their state is the cache: generation
costs the same per token at any length in three layers of four); the full-attention layers'
``q_proj`` also gives each head a sigmoid gate on its output (``output_gate``), and RoPE
(base 10,000,000) turns 64 of the 256 dimensions of a head (``rotary_dim``); every RMSNorm
scales by ``1 + w`` (Gemma's), except the linear layers' gated output norm. Generation uses a
``HybridCache`` (nn/hybrid_cache.py): KV for the attention layers, states for the rest. The
published checkpoints are vision-language models; their text part loads
(``models/convert/hf_qwen3_5.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from scratchlm.models.llama import Llama
from scratchlm.models.presets import FamilyConfig, from_preset
from scratchlm.nn.attention import GroupedQueryAttention
from scratchlm.nn.feedforward import SwiGLU
from scratchlm.nn.gated_deltanet import GatedDeltaNet
from scratchlm.nn.moe import MoEConfig, expert_ffn, moe_from
from scratchlm.nn.norm import RMSNorm


@dataclass
class Qwen35Config(FamilyConfig):
    vocab_size: int = 248320
    context_length: int = 262144
    n_embd: int = 4096
    n_layer: int = 32
    n_head: int = 16  # full-attention layers
    n_kv_head: int = 4
    head_dim: int | None = 256
    intermediate_size: int = 12288  # SwiGLU hidden width
    rope_base: float = 10_000_000.0
    partial_rotary_factor: float = 0.25  # RoPE turns this share of each head's dimensions
    norm_eps: float = 1e-6
    full_attention_interval: int = 4  # every 4th layer full attention, the rest linear
    linear_key_heads: int = 16  # Gated DeltaNet query/key heads
    linear_value_heads: int = 32  # and value heads (a multiple of the key heads)
    linear_key_dim: int = 128
    linear_value_dim: int = 128
    linear_conv_kernel: int = 4
    tie_embeddings: bool = False
    grad_checkpointing: bool = False
    # the MoE models: every layer's FFN a mixture of routed experts and a gated shared one
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self):
        owner = type(self).__name__
        self.check_attention_shape()
        self.check_positive("full_attention_interval", "linear_key_heads", "linear_value_heads",
                            "linear_key_dim", "linear_value_dim", "linear_conv_kernel")
        if self.linear_value_heads % self.linear_key_heads:
            raise ValueError(f"{owner}.linear_value_heads ({self.linear_value_heads}) must be a "
                             f"multiple of linear_key_heads ({self.linear_key_heads})")
        if not 0 < self.partial_rotary_factor <= 1 or self.rotary_dim % 2:
            raise ValueError(f"{owner}.partial_rotary_factor must be in (0, 1] and turn an "
                             f"even number of dimensions, got {self.partial_rotary_factor!r}")
        self.moe = moe_from(self.moe, owner)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_layers(self) -> list[bool]:
        """True for each Gated DeltaNet layer (every ``full_attention_interval``-th is not)."""
        return [(i + 1) % self.full_attention_interval != 0 for i in range(self.n_layer)]

    @classmethod
    def from_name(cls, name: str, **overrides) -> "Qwen35Config":
        return from_preset(QWEN35_PRESETS, name, "Qwen3.5", **overrides)


def _qwen35(n_embd: int, n_layer: int, n_head: int, n_kv_head: int, intermediate_size: int,
            value_heads: int, tie: bool) -> Qwen35Config:
    return Qwen35Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                        intermediate_size=intermediate_size, linear_value_heads=value_heads,
                        tie_embeddings=tie)


def _qwen35_moe(n_embd: int, n_layer: int, n_head: int, value_heads: int, experts: int,
                top_k: int, width: int) -> Qwen35Config:
    return Qwen35Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_kv_head=2,
                        intermediate_size=width, linear_value_heads=value_heads,
                        moe=MoEConfig(num_experts=experts, top_k=top_k, intermediate_size=width,
                                      shared_expert_size=width, norm_topk_prob=True,
                                      aux_loss_coef=0.001))


QWEN35_PRESETS: dict[str, Qwen35Config] = {
    # https://huggingface.co/Qwen/Qwen3.5-0.8B ... Qwen3.5-27B (config.json, text_config):
    # n_embd, n_layer, n_head, n_kv_head, SwiGLU width, linear value heads
    "qwen3.5-0.8b": _qwen35(1024, 24, 8, 2, 3584, 16, tie=True),
    "qwen3.5-2b": _qwen35(2048, 24, 8, 2, 6144, 16, tie=True),
    "qwen3.5-4b": _qwen35(2560, 32, 16, 4, 9216, 32, tie=True),
    "qwen3.5-9b": _qwen35(4096, 32, 16, 4, 12288, 32, tie=False),
    "qwen3.5-27b": _qwen35(5120, 64, 24, 4, 17408, 48, tie=False),
    # https://huggingface.co/Qwen/Qwen3.5-35B-A3B, -122B-A10B, -397B-A17B (text_config):
    # experts of width 512 (1,024) beside a shared expert as wide, top-8 (top-10) routing
    "qwen3.5-35b-a3b": _qwen35_moe(2048, 40, 16, 32, 256, 8, 512),
    "qwen3.5-122b-a10b": _qwen35_moe(3072, 48, 32, 64, 256, 8, 1024),
    "qwen3.5-397b-a17b": _qwen35_moe(4096, 60, 32, 64, 512, 10, 1024),
    # tiny, for tests: layers 0-2 linear, layer 3 full attention
    "qwen3.5-tiny": Qwen35Config(vocab_size=512, context_length=256, n_embd=64, n_layer=4,
                                 n_head=4, n_kv_head=2, head_dim=32, intermediate_size=128,
                                 rope_base=10_000.0, linear_key_heads=2, linear_value_heads=4,
                                 linear_key_dim=16, linear_value_dim=16, tie_embeddings=True),
}


class Qwen35Block(nn.Module):
    """One layer: ``lin`` (Gated DeltaNet) or ``att`` (gated full attention), then SwiGLU."""

    def __init__(self, cfg: Qwen35Config, linear: bool):
        super().__init__()

        def norm(dim: int) -> RMSNorm:
            return RMSNorm(dim, cfg.norm_eps, unit_offset=True)

        c = cfg.n_embd
        self.norm1 = norm(c)
        if linear:
            self.lin = GatedDeltaNet(c, cfg.linear_key_heads, cfg.linear_value_heads,
                                     cfg.linear_key_dim, cfg.linear_value_dim,
                                     cfg.linear_conv_kernel, cfg.norm_eps)
        else:
            self.att = GroupedQueryAttention(c, cfg.n_head, cfg.n_kv_head, cfg.head_dim,
                                             make_norm=norm, output_gate=True,
                                             rotary_dim=cfg.rotary_dim)
        self.norm2 = norm(c)
        self.ff = expert_ffn(cfg, lambda width: SwiGLU(c, width or cfg.intermediate_size))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0) -> torch.Tensor:
        h = self.norm1(x)
        if hasattr(self, "lin"):
            x = x + self.lin(h, cache, layer)
        else:
            x = x + self.att(h, cos, sin, cache, layer)
        return x + self.ff(self.norm2(x))


class Qwen35(Llama):
    unit_offset_norm = True

    def make_blocks(self, cfg: Qwen35Config) -> nn.ModuleList:
        return nn.ModuleList(Qwen35Block(cfg, lin) for lin in cfg.linear_layers)

    @property
    def rope_dim(self) -> int:
        return self.cfg.rotary_dim  # RoPE turns the first quarter of each head

    def rope_tables(self, length: int, device: torch.device):
        return [self.rope(length, device, self.cfg.rope_base, None)]  # no scaling

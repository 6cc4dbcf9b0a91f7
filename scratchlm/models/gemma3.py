"""Gemma 3 (text): modules only.

    token ids (B, T) -> tok_emb * sqrt(n_embd)                       (B, T, C)
      -> n_layer x block:
             x = x + post_att_norm(att(norm1(x), rope))   GQA with q/k norms; local layers
                                                          see a sliding window, every
                                                          ``sliding_window_pattern``-th is global
             x = x + post_ff_norm(ff(norm2(x)))           GeGLU (tanh GELU gate)
      -> final_norm -> out_head (tied)                               (B, T, vocab_size)

Every norm is Gemma's RMSNorm, whose scale is ``1 + weight`` (``RMSNorm(unit_offset=True)``).
Local and global layers have their own RoPE bases (10,000 and 1,000,000); queries are scaled
by ``query_pre_attn_scalar ** -0.5``. Module names follow the Llama model where the role is
the same, so LoRA targets, the engine and the training code serve both; the forward pass is
``Llama.hidden_states`` with Gemma's embedding scale and two RoPE tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from scratchlm.models.llama import Llama
from scratchlm.models.presets import FamilyConfig, from_preset
from scratchlm.nn.attention import GroupedQueryAttention, layer_windows
from scratchlm.nn.feedforward import SwiGLU
from scratchlm.nn.moe import MoEConfig, expert_ffn, moe_from
from scratchlm.nn.norm import RMSNorm


@dataclass
class Gemma3Config(FamilyConfig):
    vocab_size: int = 262144
    context_length: int = 32768
    n_embd: int = 640
    n_layer: int = 18
    n_head: int = 4
    n_kv_head: int = 1
    head_dim: int = 256  # independent of n_embd / n_head
    intermediate_size: int = 2048  # GeGLU hidden width
    rope_base: float = 1_000_000.0  # global layers
    rope_local_base: float = 10_000.0  # local (sliding-window) layers
    rope_linear_factor: float = 1.0  # > 1: linear position interpolation on global layers (4B+)
    norm_eps: float = 1e-6
    query_pre_attn_scalar: int = 256  # queries are scaled by its inverse square root
    sliding_window: int = 512  # local layers attend to the last this-many positions
    sliding_window_pattern: int = 6  # every 6th layer global: five local to one global
    tie_embeddings: bool = True
    grad_checkpointing: bool = False
    moe: MoEConfig = field(default_factory=MoEConfig)  # Gemma 3 is dense; kept for the shared code

    def __post_init__(self):
        self.check_attention_shape()
        if self.query_pre_attn_scalar <= 0 or self.rope_linear_factor <= 0:
            raise ValueError("Gemma3Config.query_pre_attn_scalar and rope_linear_factor must "
                             "be positive")
        self.moe = moe_from(self.moe, "Gemma3Config")
        layer_windows(self, "Gemma3Config")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "Gemma3Config":
        return from_preset(GEMMA3_PRESETS, name, "Gemma 3", **overrides)


GEMMA3_PRESETS: dict[str, Gemma3Config] = {
    # https://huggingface.co/google/gemma-3-270m (config.json)
    "gemma3-270m": Gemma3Config(n_embd=640, n_layer=18, n_head=4, n_kv_head=1,
                                intermediate_size=2048),
    # https://huggingface.co/google/gemma-3-1b-pt (config.json)
    "gemma3-1b": Gemma3Config(n_embd=1152, n_layer=26, n_head=4, n_kv_head=1,
                              intermediate_size=6912),
    # tiny, for tests: layers 0-1 local (window 8), layer 2 global
    "gemma3-tiny": Gemma3Config(vocab_size=512, context_length=128, n_embd=64, n_layer=3,
                                n_head=4, n_kv_head=2, head_dim=32, intermediate_size=128,
                                query_pre_attn_scalar=32, sliding_window=8,
                                sliding_window_pattern=3),
}


class Gemma3Block(nn.Module):
    def __init__(self, cfg: Gemma3Config, window: int = 0):
        super().__init__()

        def norm(dim: int) -> RMSNorm:
            return RMSNorm(dim, cfg.norm_eps, unit_offset=True)

        c = cfg.n_embd
        self.norm1 = norm(c)
        self.att = GroupedQueryAttention(c, cfg.n_head, cfg.n_kv_head, cfg.head_dim,
                                         make_norm=norm, scale=cfg.query_pre_attn_scalar ** -0.5,
                                         window=window)
        self.post_att_norm = norm(c)
        self.norm2 = norm(c)
        self.ff = expert_ffn(cfg, lambda width: SwiGLU(c, width or cfg.intermediate_size,
                                                       act="gelu_tanh"))
        self.post_ff_norm = norm(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.post_att_norm(self.att(self.norm1(x), cos, sin, cache, layer))  # (B, T, C)
        return x + self.post_ff_norm(self.ff(self.norm2(x)))


class Gemma3(Llama):
    block_cls = Gemma3Block
    unit_offset_norm = True

    def embed(self, in_idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(in_idx)  # (B, T, C)
        # the scale rounded to the weights' dtype first, as the reference does
        return x * torch.tensor(self.cfg.n_embd ** 0.5, dtype=x.dtype)

    def rope(self, length: int, device: torch.device, base: float | None = None,
             scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if base is None:  # the global layers' table
            f = self.cfg.rope_linear_factor
            base, scaling = self.cfg.rope_base, ({"factor": f} if f != 1.0 else None)
        return super().rope(length, device, base, scaling)

    def rope_tables(self, length: int, device: torch.device):
        return [self.rope(length, device, self.cfg.rope_local_base), self.rope(length, device)]

    @property
    def rope_index(self) -> list[int]:
        """0 (the local table) for sliding-window layers, 1 for global ones."""
        return [0 if b.att.window else 1 for b in self.trf_blocks]

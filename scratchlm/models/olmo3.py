"""OLMo 3 (AI2's fully open models): modules only.

    token ids (B, T) -> tok_emb                                       (B, T, C)
      -> n_layer x block:
             x = x + att_out_norm(att(x, rope))    GQA, q and k each RMS-normed over all
                                                   their heads; three of every four layers
                                                   see a sliding window, every fourth is global
             x = x + ff_out_norm(ff(x))            SwiGLU
      -> final_norm -> out_head (untied)                              (B, T, vocab_size)

What is new against Llama: the norms sit after attention and the feed-forward, inside the
residual ("reordered norm", as OLMo 2), not before them; q/k norms span all heads, not one head;
sliding-window layers; and YaRN RoPE scaling on the global layers only (``nn/rope.py``), the
local ones keeping plain RoPE at the same base. The forward pass is ``Llama.hidden_states``
with two RoPE tables, as Gemma 3's.
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
class Olmo3Config(FamilyConfig):
    vocab_size: int = 100278
    context_length: int = 65536
    n_embd: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int = 32
    head_dim: int | None = None  # default n_embd // n_head
    intermediate_size: int = 11008  # SwiGLU hidden width
    rope_base: float = 500_000.0  # every layer's
    # YaRN on the global layers: {"type": "yarn", "factor", "original_context_length",
    # "beta_fast", "beta_slow", "attention_factor"} (nn/rope.py); None: plain RoPE
    rope_scaling: dict | None = None
    norm_eps: float = 1e-6
    sliding_window: int = 4096  # local layers attend to the last this-many positions
    sliding_window_pattern: int = 4  # every 4th layer global: three local to one global
    tie_embeddings: bool = False
    qkv_bias: bool = False
    grad_checkpointing: bool = False
    moe: MoEConfig = field(default_factory=MoEConfig)  # OLMo 3 is dense; kept for the shared code

    def __post_init__(self):
        self.check_attention_shape()
        if self.rope_scaling is not None and self.rope_scaling.get("type") != "yarn":
            raise ValueError(f"Olmo3Config.rope_scaling must be YaRN's ({{'type': 'yarn', "
                             f"...}}), got {self.rope_scaling!r}")
        self.moe = moe_from(self.moe, "Olmo3Config")
        layer_windows(self, "Olmo3Config")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "Olmo3Config":
        return from_preset(OLMO3_PRESETS, name, "OLMo 3", **overrides)


_YARN = {"type": "yarn", "factor": 8.0, "original_context_length": 8192,
            "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.2079441541679836}

OLMO3_PRESETS: dict[str, Olmo3Config] = {
    # https://huggingface.co/allenai/Olmo-3-1025-7B and allenai/Olmo-3-1125-32B (config.json:
    # 3 local layers to 1 global, window 4096, YaRN x8 from 8,192 on the global layers)
    "olmo3-7b": Olmo3Config(rope_scaling=_YARN),
    "olmo3-32b": Olmo3Config(n_embd=5120, n_layer=64, n_head=40, n_kv_head=8,
                             intermediate_size=27648, rope_scaling=_YARN),
    # tiny, for tests: layers 0-2 local (window 8), layer 3 global with YaRN
    "olmo3-tiny": Olmo3Config(vocab_size=512, context_length=128, n_embd=64, n_layer=4,
                              n_head=4, n_kv_head=2, intermediate_size=128, rope_base=10_000.0,
                              sliding_window=8, sliding_window_pattern=4,
                              rope_scaling={"type": "yarn", "factor": 4.0,
                                            "original_context_length": 32}),
}


class Olmo3Block(nn.Module):
    def __init__(self, cfg: Olmo3Config, window: int = 0):
        super().__init__()
        c = cfg.n_embd
        self.att = GroupedQueryAttention(
            c, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.qkv_bias,
            make_norm=lambda d: RMSNorm(d, cfg.norm_eps), window=window, norm_all_heads=True)
        self.att_out_norm = RMSNorm(c, cfg.norm_eps)
        self.ff = expert_ffn(cfg, lambda width: SwiGLU(c, width or cfg.intermediate_size))
        self.ff_out_norm = RMSNorm(c, cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.att_out_norm(self.att(x, cos, sin, cache, layer))  # (B, T, C)
        return x + self.ff_out_norm(self.ff(x))


class Olmo3(Llama):
    block_cls = Olmo3Block

    def rope_tables(self, length: int, device: torch.device):
        """The local layers' plain table, and the global layers' (YaRN when configured)."""
        return [self.rope(length, device, self.cfg.rope_base, None), self.rope(length, device)]

    @property
    def rope_index(self) -> list[int]:
        """0 (plain RoPE) for sliding-window layers, 1 for global ones."""
        return [0 if b.att.window else 1 for b in self.trf_blocks]

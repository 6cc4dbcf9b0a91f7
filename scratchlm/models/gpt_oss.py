"""gpt-oss (OpenAI's open-weight mixture-of-experts models): modules only.

    token ids (B, T) -> tok_emb                                       (B, T, C)
      -> n_layer x block:
             x = x + att(norm1(x), rope)    GQA with biases and one learned "sink" logit per
                                            head; even layers see a sliding window of 128,
                                            odd ones everything
             x = x + moe(norm2(x))          a biased router picks 4 of 32 (or 128) experts, each
                                            a clamped SwiGLU with biases
      -> final_norm -> out_head (untied)                              (B, T, vocab_size)

What is new against Llama:
- attention sinks (``GroupedQueryAttention(sinks=True)``, ``nn/attention.py``): each head's
  softmax has one more logit, learned, for a key whose value is zero, so a head may give
  weight to nothing; biases on q, k, v and the output projection;
- experts ``ClampedSwiGLU`` (``nn/feedforward.py``): gate clamped above at 7, up clamped to
  [-7, 7], ``gate * sigmoid(1.702 gate) * (up + 1)``; the router has a bias, takes the top 4
  logits and softmaxes over those (the same gates as a softmax over all experts renormalised
  over the top 4: ``MoEConfig(norm_topk_prob=True)``);
- YaRN RoPE (x32 from 4,096 positions) on every layer, local and global.

The published checkpoints store the experts' weights in MXFP4 (``convert/mxfp4.py``); they are
dequantized on load. The forward pass is ``Llama.hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from scratchlm.models.llama import Llama, LlamaBlock
from scratchlm.models.presets import FamilyConfig, from_preset
from scratchlm.nn.attention import GroupedQueryAttention, layer_windows
from scratchlm.nn.feedforward import ClampedSwiGLU
from scratchlm.nn.moe import MoEConfig, expert_ffn, moe_from
from scratchlm.nn.norm import RMSNorm


@dataclass
class GptOssConfig(FamilyConfig):
    vocab_size: int = 201088
    context_length: int = 131072
    n_embd: int = 2880
    n_layer: int = 24
    n_head: int = 64
    n_kv_head: int = 8
    head_dim: int | None = 64
    intermediate_size: int = 2880  # each expert's hidden width
    rope_base: float = 150_000.0
    # {"type": "yarn", "factor", "original_context_length", "beta_fast", "beta_slow",
    # "truncate"} (nn/rope.py) on every layer; None: plain RoPE
    rope_scaling: dict | None = None
    norm_eps: float = 1e-5
    sliding_window: int = 128
    sliding_window_pattern: int = 2  # every 2nd layer global: local and global alternate
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    tie_embeddings: bool = False
    grad_checkpointing: bool = False
    moe: MoEConfig = field(default_factory=lambda: MoEConfig(
        num_experts=32, top_k=4, norm_topk_prob=True, router_bias=True))

    def __post_init__(self):
        self.check_attention_shape()
        if self.rope_scaling is not None and self.rope_scaling.get("type") != "yarn":
            raise ValueError(f"GptOssConfig.rope_scaling must be YaRN's ({{'type': 'yarn', "
                             f"...}}), got {self.rope_scaling!r}")
        if not self.swiglu_limit > 0:
            raise ValueError(f"GptOssConfig.swiglu_limit must be > 0, got {self.swiglu_limit}")
        self.moe = moe_from(self.moe, "GptOssConfig")
        if not self.moe.num_experts:
            raise ValueError("GptOssConfig.moe.num_experts must be > 0: every gpt-oss "
                             "feed-forward is a mixture of experts")
        layer_windows(self, "GptOssConfig")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "GptOssConfig":
        return from_preset(GPT_OSS_PRESETS, name, "gpt-oss", **overrides)


_YARN = {"type": "yarn", "factor": 32.0, "original_context_length": 4096, "beta_fast": 32.0,
         "beta_slow": 1.0, "truncate": False}

GPT_OSS_PRESETS: dict[str, GptOssConfig] = {
    # https://huggingface.co/openai/gpt-oss-20b and openai/gpt-oss-120b (config.json)
    "gpt-oss-20b": GptOssConfig(rope_scaling=_YARN),
    "gpt-oss-120b": GptOssConfig(n_layer=36, rope_scaling=_YARN,
                                 moe=MoEConfig(num_experts=128, top_k=4, norm_topk_prob=True,
                                               router_bias=True)),
    # tiny, for tests: window 8, 8 experts, 2 per token
    "gpt-oss-tiny": GptOssConfig(vocab_size=512, context_length=128, n_embd=64, n_layer=4,
                                 n_head=4, n_kv_head=2, head_dim=16, intermediate_size=64,
                                 rope_base=10_000.0, sliding_window=8,
                                 rope_scaling={"type": "yarn", "factor": 4.0,
                                               "original_context_length": 32,
                                               "truncate": False},
                                 moe=MoEConfig(num_experts=8, top_k=2, norm_topk_prob=True,
                                               router_bias=True)),
}


class GptOssBlock(LlamaBlock):
    """Llama's pre-norm block (its forward) with sink attention and clamped SwiGLU experts."""

    def __init__(self, cfg: GptOssConfig, window: int = 0):
        nn.Module.__init__(self)
        self.norm1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.att = GroupedQueryAttention(cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim,
                                         qkv_bias=True, window=window, sinks=True,
                                         out_bias=True)
        self.norm2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.ff = expert_ffn(cfg, lambda width: ClampedSwiGLU(
            cfg.n_embd, width or cfg.intermediate_size, cfg.swiglu_alpha, cfg.swiglu_limit))


class GptOss(Llama):
    block_cls = GptOssBlock

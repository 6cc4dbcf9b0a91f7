"""Qwen3 (dense and MoE): the Llama skeleton with a per-head RMSNorm on queries and keys.

    token ids (B, T) -> tok_emb                                     (B, T, C)
      -> n_layer x block:  x = x + att(norm1(x), rope)   GQA; q_norm/k_norm on each head,
                                                         then RoPE (base 1,000,000)
                           x = x + ff(norm2(x))          SwiGLU, or a mixture of SwiGLU experts
      -> final_norm -> out_head                                     (B, T, vocab_size)

What differs from Llama is only configuration: ``qk_norm=True``; ``head_dim`` set on its own
(128 for every size, so n_head * head_dim need not equal n_embd); RMSNorm eps 1e-6; the MoE
models route each token to 8 of 128 experts with renormalised gates (``MoEConfig``). So the
modules are ``models/llama.py``'s, and this file holds the config and the published shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.models.presets import from_preset
from scratchlm.nn.moe import MoEConfig


@dataclass
class Qwen3Config(LlamaConfig):
    vocab_size: int = 151936
    context_length: int = 40960
    head_dim: int | None = 128
    rope_base: float = 1_000_000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True

    @classmethod
    def from_name(cls, name: str, **overrides) -> "Qwen3Config":
        return from_preset(QWEN3_PRESETS, name, "Qwen3", **overrides)


class Qwen3(Llama):
    """Qwen3's modules are Llama's with ``cfg.qk_norm`` on (see the module docstring)."""


def _qwen3(n_embd: int, n_layer: int, n_head: int, intermediate_size: int, tie: bool,
           **kw) -> Qwen3Config:
    kw.setdefault("n_kv_head", 8)
    return Qwen3Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                       intermediate_size=intermediate_size, tie_embeddings=tie, **kw)


QWEN3_PRESETS: dict[str, Qwen3Config] = {
    # https://huggingface.co/Qwen/Qwen3-0.6B ... Qwen3-8B (config.json)
    "qwen3-0.6b": _qwen3(1024, 28, 16, 3072, tie=True),
    "qwen3-1.7b": _qwen3(2048, 28, 16, 6144, tie=True),
    "qwen3-4b": _qwen3(2560, 36, 32, 9728, tie=True),
    "qwen3-8b": _qwen3(4096, 36, 32, 12288, tie=False),
    # https://huggingface.co/Qwen/Qwen3-30B-A3B (config.json): 128 experts of width 768, 8 per
    # token, gates renormalised (norm_topk_prob)
    "qwen3-30b-a3b": _qwen3(2048, 48, 32, 6144, tie=False, n_kv_head=4,
                            moe=MoEConfig(num_experts=128, top_k=8, intermediate_size=768,
                                          norm_topk_prob=True)),
    # tiny, for tests
    "qwen3-tiny": Qwen3Config(vocab_size=512, context_length=128, n_embd=64, n_layer=2,
                              n_head=4, n_kv_head=2, head_dim=32, intermediate_size=128),
}

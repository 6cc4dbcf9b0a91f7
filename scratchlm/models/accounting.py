"""Counting a model: parameters, memory, and FLOPs per token (pure functions of the model or
its config; the trainer uses ``flops_per_token`` for MFU)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, each shared tensor counted once (a tied head adds nothing)."""
    # .parameters() yields a shared tensor only once
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class MemoryReport:
    total_params: int  # unique parameters
    params_untied: int  # as if out_head had its own weight (the book's first figure)
    bytes_per_param: int

    @property
    def size_mb(self) -> float:
        """Size of the unique parameters in MB (MiB, as the book computes it)."""
        return self.total_params * self.bytes_per_param / (1024 * 1024)

    def __str__(self) -> str:
        return (f"{self.total_params:,} parameters ({self.params_untied:,} with a separate "
                f"output head), {self.size_mb:,.2f} MB at {self.bytes_per_param} bytes each")


def memory_report(model, bytes_per_param: int = 4) -> MemoryReport:
    """Parameters and their memory of a model, or of the model a config describes (built on
    the meta device: nothing is allocated)."""
    if not isinstance(model, nn.Module):
        from scratchlm.models.registry import build_model
        from scratchlm.nn.meta import meta_device

        with meta_device():
            model = build_model(model)
    total = count_parameters(model)
    untied = total
    head, emb = getattr(model, "out_head", None), getattr(model, "tok_emb", None)
    if head is not None and emb is not None and head.weight is emb.weight:
        untied += head.weight.numel()
    return MemoryReport(total, untied, bytes_per_param)


def flops_per_token(cfg, seq_len: int | None = None) -> tuple[float, float]:
    """(forward, training) FLOPs per token for a GPT- or Llama-style config (or a model).

    Every weight matrix costs 2 FLOPs per parameter per token in the forward pass (a multiply
    and an add); attention adds QK^T and AV, 2 * 2 * n_layer * seq_len * n_embd per token
    (counting the full sequence, as the PaLM paper's appendix B does). Backward costs twice the
    forward, so training = 3 x forward:

        forward  = 2 * N_matmul + 4 * n_layer * seq_len * n_embd
        training = 6 * N_matmul + 12 * n_layer * seq_len * n_embd

    N_matmul counts the projection, feed-forward and output-head weights a token passes
    through (with a mixture of experts: the router and top_k experts, not all of them);
    embedding lookups, norms and biases are negligible and left out.
    """
    cfg = getattr(cfg, "cfg", cfg)  # a model: its config
    t = seq_len or cfg.context_length
    c, layers = cfg.n_embd, cfg.n_layer
    hidden = getattr(cfg, "intermediate_size", None)
    if hidden is None:  # GPT: qkv (3C^2) + out_proj (C^2) + MLP C->4C->C (8C^2)
        attn, ffn = 4 * c * c, 8 * c * c
    else:  # Llama: q,o (C * H*D each), k,v (C * KV*D each), gated FFN: three C x hidden
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        attn, ffn = 2 * c * q_dim + 2 * c * kv_dim, 3 * c * hidden
    moe = getattr(cfg, "moe", None)
    if moe is not None and moe.num_experts:  # top_k experts per token, plus the (C x N) router
        if moe.intermediate_size:
            ffn = ffn * moe.intermediate_size // (hidden or 4 * c)
        ffn = moe.top_k * ffn + c * moe.num_experts
    per_layer = attn + ffn
    n_matmul = layers * per_layer + cfg.vocab_size * c
    forward = 2 * n_matmul + 4 * layers * t * c
    return float(forward), float(3 * forward)

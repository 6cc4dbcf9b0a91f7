"""Tiny random models of every architecture the exporters write."""

from __future__ import annotations

import dataclasses


def tiny(name: str, **changes):
    """A random tiny model of a family, in eval mode, seeded."""
    import torch

    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    return build_model(dataclasses.replace(preset(name)[1], **changes)).eval()


# Every llama.cpp architecture we write, as tiny models (Gemma's GGUF fixes its 5:1 pattern)
FAMILIES = {
    "gpt2": ("gpt-tiny", {"vocab_size": 512}),
    "gpt2-book": ("gpt-tiny", {"vocab_size": 512, "qkv_bias": False, "tie_embeddings": False,
                               "vocab_pad_multiple": 64}),
    "llama": ("llama-tiny", {}),
    "llama-untied": ("llama-tiny", {"tie_embeddings": False}),
    # Llama 3.x's RoPE scaling (written as rope_freqs): three blended frequencies at head_dim 64
    "llama3-scaled": ("llama-tiny", {"head_dim": 64, "rope_base": 500000.0, "rope_scaling": {
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_context_length": 64}}),
    "qwen3": ("qwen3-tiny", {}),
    "qwen3moe": ("qwen3-tiny", {"moe": {"num_experts": 4, "top_k": 2, "intermediate_size": 32}}),
    "gemma3": ("gemma3-tiny", {"n_layer": 6, "sliding_window_pattern": 6}),
    "olmo2": ("olmo3-tiny", {}),  # OLMo 3: local layers, YaRN on the global ones
    # gpt-oss: sinks, biases, 8 clamped-SwiGLU experts with biases, YaRN as llama.cpp rounds it
    # Qwen3.5: Gated DeltaNet layers with 2 value heads per key head (llama.cpp reorders them)
    "qwen35": ("qwen3.5-tiny", {}),
    "qwen35moe": ("qwen3.5-tiny", {"moe": {"num_experts": 4, "top_k": 2, "intermediate_size": 32,
                                           "shared_expert_size": 48}}),
    # Gemma 4: per-layer embeddings, 2 KV-shared layers twice as wide, global heads of 64 with
    # proportional RoPE; and the 26B's kind: keys as values, a mixture beside the dense FFN
    "gemma4": ("gemma4-tiny", {}),
    "gemma4-moe": ("gemma4-tiny", {"k_eq_v": True, "ple_dim": 0, "kv_shared_layers": 0,
                                   "double_wide_mlp": False,
                                   "moe": {"num_experts": 4, "top_k": 2,
                                           "intermediate_size": 32}}),
    "gpt-oss": ("gpt-oss-tiny", {"rope_scaling": {"type": "yarn", "factor": 4.0,
                                                  "original_context_length": 32}}),
}

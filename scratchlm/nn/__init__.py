"""Shared building blocks: attention variants, norms, RoPE, feed-forward and mixture of
experts, the KV cache, fused losses, quantized linears (int8, NF4, GGUF blocks) and the C
kernels (``csrc/``, built on first use by ``native.py``)."""

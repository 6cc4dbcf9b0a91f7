"""The initialisation a model trained from scratch starts from.

GPT-2's, which Hugging Face's Llama, Qwen, Gemma and OLMo models also use
(``initializer_range`` 0.02): normal(0, 0.02) for Linear and Embedding weights, zero biases;
norms keep their constructors' ones (or zeros for Gemma's ``1 + w`` scales). PyTorch's own
defaults (unit-variance embeddings) make a tied head's first logits about sqrt(n_embd) wide and
the first losses far above log(vocab_size).
"""

from __future__ import annotations

from torch import nn

STD = 0.02


def normal_init(module: nn.Module) -> None:
    """For ``model.apply``: one module's weights as GPT-2 initialises them."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=STD)

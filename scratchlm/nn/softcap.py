"""An output head whose logits are soft-capped: ``cap * tanh(linear(x) / cap)`` (Gemma 2 and
Gemma 4's ``final_logit_softcapping``), so no logit leaves (-cap, cap).

The cap belongs to the head module itself, so every path that computes logits by calling the
head (the model's forward, the engine's last-position logits, GRPO's log-probabilities, the
evaluation harness) caps them. ``head_linear``'s C matvec knows it and caps its output; the
fused losses, which multiply by the weight matrix themselves, take only a plain ``nn.Linear``
and call this module instead. Int8 quantization leaves it in float (``nn/quant.py``), and LoRA does not wrap
it (``finetune/lora.py``: "all" targets leave it out, "head" is refused), as a LoRA layer
computes its output from the weight alone and would drop the cap."""

from __future__ import annotations

import torch
from torch import nn


class SoftcapLinear(nn.Linear):
    """``nn.Linear`` (no bias) followed by the soft cap; ``softcap`` > 0."""

    def __init__(self, in_features: int, out_features: int, softcap: float):
        super().__init__(in_features, out_features, bias=False)
        if softcap <= 0:
            raise ValueError(f"softcap must be > 0, got {softcap}")
        self.softcap = float(softcap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x) / self.softcap) * self.softcap

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, softcap={self.softcap}"

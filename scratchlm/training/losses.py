"""The language-model loss every recipe uses."""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.nn.loss import cross_entropy, head_weight, linear_cross_entropy
from scratchlm.nn.moe import moe_aux_loss


def causal_lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   fused: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on (B, T) inputs/targets (-100 ignored).

    With a bias-free linear head (plain or LoRA) the head is fused with the loss (no (B*T, V)
    logits, see ``nn/loss.py``); other heads take the plain path.
    """
    weight = head_weight(getattr(model, "out_head", None)) if fused else None
    if weight is not None and hasattr(model, "hidden_states"):
        weight = weight[: model.cfg.vocab_size]  # drop vocabulary padding rows
        return linear_cross_entropy(model.hidden_states(inputs), weight, targets)
    return cross_entropy(model(inputs), targets)


class CausalLMLoss(nn.Module):
    """``model`` plus its loss as one module, ``(inputs, targets) -> loss``: the unit DDP and
    FSDP wrap, so the fused head+loss still runs inside their forward hooks."""

    def __init__(self, model: nn.Module, fused: bool = True):
        super().__init__()
        self.model, self.fused = model, fused

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = causal_lm_loss(self.model, inputs, targets, self.fused)
        # A mixture-of-experts model adds its router losses while training (evaluation
        # reports the plain cross-entropy, so perplexities stay comparable).
        aux = moe_aux_loss(self.model) if self.model.training else None
        return loss if aux is None else loss + aux

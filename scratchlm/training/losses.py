"""The language-model loss every recipe uses. What the training loop asks of this and every
other loss module (``batch_weight``, the optional hooks) is ``training/contract.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.nn.doc_mask import DocumentMask
from scratchlm.nn.loss import cross_entropy, fusable_head, head_weight, linear_cross_entropy
from scratchlm.nn.moe import moe_aux_loss
from scratchlm.training.contract import unwrap


def causal_lm_loss(model: nn.Module, inputs, targets: torch.Tensor,
                   fused: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on (B, T) inputs/targets (-100 ignored).
    ``inputs`` may be (ids, segments): rows packed with several documents, each attending only
    to itself with its positions from 0 (``nn/doc_mask.py``).

    With a bias-free linear head (plain or LoRA) the head is fused with the loss (no (B*T, V)
    logits, see ``nn/loss.py``); other heads take the plain path.
    """
    mask = None
    if isinstance(inputs, (tuple, list)):
        inputs, mask = inputs[0], DocumentMask(inputs[1])
    if fused and fusable_head(getattr(model, "out_head", None)) and hasattr(model,
                                                                            "hidden_states"):
        hidden = model.hidden_states(inputs, mask)  # first: under FSDP this gathers the head
        weight = head_weight(model.out_head)[: model.cfg.vocab_size]  # no vocabulary padding
        return linear_cross_entropy(hidden, weight, targets)
    return cross_entropy(model(inputs, mask), targets)


IGNORE_INDEX = -100


def target_tokens(targets: torch.Tensor) -> torch.Tensor:
    """The number of targets that count (not ``IGNORE_INDEX``), as a 0-d tensor."""
    return (targets != IGNORE_INDEX).sum()


def batch_weight(loss_module: nn.Module, inputs, targets) -> torch.Tensor:
    """``loss_module.batch_weight(inputs, targets)``, through a DDP wrapper when there is one;
    a loss module without it is an error naming its class."""
    inner = unwrap(loss_module)
    fn = getattr(inner, "batch_weight", None)
    if fn is None:
        raise TypeError(f"{type(inner).__name__} has no batch_weight(inputs, targets): the "
                        "training step needs each loss module's unit count "
                        "(training/contract.py)")
    return torch.as_tensor(fn(inputs, targets))


class CausalLMLoss(nn.Module):
    """``model`` plus its loss as one module, ``(inputs, targets) -> loss``: the unit DDP and
    FSDP wrap, so the fused head+loss still runs inside their forward hooks."""

    is_cross_entropy = True  # fit: a mean token cross-entropy, so its perplexity means something

    def __init__(self, model: nn.Module, fused: bool = True):
        super().__init__()
        self.model, self.fused = model, fused

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = causal_lm_loss(self.model, inputs, targets, self.fused)
        # A mixture-of-experts model adds its router losses while training (evaluation
        # reports the plain cross-entropy, so perplexities stay comparable).
        aux = moe_aux_loss(self.model) if self.model.training else None
        return loss if aux is None else loss + aux

    def batch_weight(self, inputs, targets: torch.Tensor) -> torch.Tensor:
        return target_tokens(targets)

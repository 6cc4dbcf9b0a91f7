"""Classification finetuning (the book's chapter 6) for any of our models: model surgery, the
loss on the last real token, accuracy, and classifying a text.

    tokens -> transformer -> final norm -> out_head: Linear(n_embd, num_classes)
                                            ^ logits of the last real token only
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.models.accounting import count_parameters


def add_classifier_head(model: nn.Module, num_classes: int, bias: bool = True) -> nn.Module:
    """Replace the output head with ``Linear(n_embd, num_classes)`` (unties it from the
    embedding); ``bias=False``: no bias, as transformers' ``...ForSequenceClassification``
    heads, which a classifier must match to be exported to them (``export/hf.py``)."""
    torch.manual_seed(123)  # the book seeds the new head
    model.out_head = nn.Linear(model.cfg.n_embd, num_classes, bias=bias).to(
        next(model.parameters()).device)
    return model


def freeze_for_classification(model: nn.Module, trainable: str = "last_block",
                              last_k: int = 1) -> nn.Module:
    """``head``: only the new head; ``last_block``: head, final norm and the last ``last_k``
    blocks (the book's choice); ``all``: everything."""
    if trainable not in ("head", "last_block", "all"):
        raise ValueError(f"trainable must be head, last_block or all, got {trainable!r}")
    for p in model.parameters():
        p.requires_grad_(trainable == "all")
    for p in model.out_head.parameters():
        p.requires_grad_(True)
    if trainable == "last_block":
        for p in model.final_norm.parameters():
            p.requires_grad_(True)
        for block in model.trf_blocks[-last_k:]:
            for p in block.parameters():
                p.requires_grad_(True)
    return model


def class_logits(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T) ids and (B,) real lengths -> (B, num_classes) logits of each last real token."""
    h = model.hidden_states(ids)  # (B, T, C)
    last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, C)
    return model.out_head(last)


class ClassificationLoss(nn.Module):
    """``((ids, lengths), labels) -> mean cross-entropy``: the unit the training loop runs."""

    unit = "examples"  # what batch_weight counts (the loss plot's top axis)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, labels: torch.Tensor) -> torch.Tensor:
        ids, lengths = inputs
        return F.cross_entropy(class_logits(self.model, ids, lengths), labels)

    def batch_weight(self, inputs, labels: torch.Tensor) -> int:
        """Examples."""
        return labels.shape[0]


@torch.no_grad()
def calc_accuracy_loader(model: nn.Module, loader, device, num_batches: int | None = None) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    for i, ((ids, lengths), labels) in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        pred = class_logits(model, ids.to(device), lengths.to(device)).argmax(-1)
        correct += (pred == labels.to(device)).sum().item()
        total += labels.numel()
    model.train(was)
    return correct / max(total, 1)


@torch.no_grad()
def calc_loss_loader(model: nn.Module, loader, device, num_batches: int | None = None) -> float:
    loss_fn, losses = ClassificationLoss(model), []
    was = model.training
    model.eval()
    for i, ((ids, lengths), labels) in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        losses.append(loss_fn((ids.to(device), lengths.to(device)), labels.to(device)).item())
    model.train(was)
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def classify_text(text: str, model: nn.Module, tokenizer, max_length: int | None = None,
                  label_names: list[str] | None = None):
    """The predicted class of ``text`` (its name when ``label_names`` is given)."""
    model.eval()
    ids = tokenizer.encode(text)[: max_length or model.cfg.context_length] or [0]
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    pred = class_logits(model, x, torch.tensor([len(ids)], device=device)).argmax(-1).item()
    return label_names[pred] if label_names else pred


def prepare_head_finetuning(model: nn.Module, num_outputs: int, trainable: str = "last_block",
                            last_k: int = 1, lora=None, bias: bool = True) -> int:
    """A new ``num_outputs`` head, then what trains: with a ``LoraConfig`` of rank > 0, LoRA
    adapters plus the new head (which always trains); otherwise ``freeze_for_classification``.
    Returns the number of trainable parameters. The recipes for classifiers, reward models and
    taggers all start here."""
    from scratchlm.finetune.lora import apply_lora

    add_classifier_head(model, num_outputs, bias)
    if lora is not None and lora.rank > 0:
        apply_lora(model, lora.rank, lora.alpha, tuple(lora.targets), lora.dropout, lora.scaling,
                   quantize_base=lora.quantize_base)
        model.out_head.requires_grad_(True)
    else:
        freeze_for_classification(model, trainable, last_k)
    return count_parameters(model, trainable_only=True)

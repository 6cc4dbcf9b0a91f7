"""Optimizers with weight-decay groups.

Weight decay shrinks weights toward zero; applied to LayerNorm/RMSNorm scales, biases or
embedding rows it only hurts, so by default those go in a no-decay group (as in GPT-2/nanoGPT).
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.training.config import MUON_LR
from scratchlm.training.muon import Muon, muon_param_groups


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices of Linear-like layers decay; norms, biases, embeddings do not.
    Only trainable parameters are included; a tied weight appears once."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.add(id(module.weight))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


OPTIMIZERS = ("adamw", "adamw8bit", "sgd", "muon")


def build_optimizer(model: nn.Module, name: str = "adamw", lr: float = 3e-4,
                    weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                    device_type: str = "cpu", muon_lr: float = MUON_LR) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "muon":
        # hidden matrices at muon_lr; head, embeddings, norms, biases: AdamW at lr (muon.py)
        # the orthogonalisation in bfloat16 on GPUs (as the reference), float32 on a CPU
        ns_dtype = torch.bfloat16 if device_type == "cuda" else None
        return Muon(muon_param_groups(model, lr, muon_lr, weight_decay, betas=betas), ns_dtype)
    if name == "adamw":
        # The fused kernel does the whole update in one pass (CPU and CUDA).
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    if name == "adamw8bit":
        if device_type != "cuda":
            raise ValueError("optimizer 'adamw8bit' needs CUDA (bitsandbytes)")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("optimizer 'adamw8bit' needs `pip install bitsandbytes`") from None
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def optimizer_for(model: nn.Module, train, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer a run's ``TrainConfig`` asks for (its name, rate, decay and betas)."""
    return build_optimizer(model, train.optimizer, train.lr, train.weight_decay,
                           (train.beta1, train.beta2), device.type, muon_lr=train.muon_lr_value)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group to the schedule's ``lr`` times its ``lr_ratio`` (1 unless a group has its own
    rate, as Muon's matrices do)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)

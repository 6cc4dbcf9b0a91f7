"""Knowledge distillation: a small student learns from a frozen teacher's output distribution
(Hinton et al., 2015), for classification logits (B, K) and causal-LM logits (B, T, V) alike:

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

T > 1 softens both distributions so the student also learns the teacher's "dark knowledge"
(which wrong answers are nearly right); the T^2 factor keeps the KL term's gradients on the
scale of the CE term as T changes. Per-token in the causal case, over targets that are not -100
(padding and masked prompts take part in neither term).

A student is any model of the same family with the same vocabulary, e.g. the teacher's config
with fewer layers (``student_from_teacher``, initialised from every other teacher block as in
DistilBERT) or a narrower preset.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.nn.loss import fusable_head, head_weight, linear_distillation_loss


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, alpha: float = 0.5,
                      temperature: float = 2.0) -> torch.Tensor:
    """(..., V) student and teacher logits, (...) labels (-100 ignored) -> scalar loss."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: do they share a vocabulary?")
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError("alpha must be in [0, 1] and temperature > 0")
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v).float()
    t = teacher_logits.reshape(-1, v).float()
    y = labels.reshape(-1)
    keep = y != -100
    s, t, y = s[keep], t[keep], y[keep]
    ce = F.cross_entropy(s, y)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")  # mean over rows
    return alpha * ce + (1 - alpha) * temperature**2 * kl


class DistillationLoss(nn.Module):
    """``(inputs, targets) -> loss`` for the training loop: the student trains against the
    frozen teacher's logits. Language models with plain or LoRA heads take the fused path
    (``nn/loss.linear_distillation_loss``, the same value without the logits). In eval mode it
    is the student's plain cross-entropy, so the logged validation loss/perplexity are the
    student's own."""

    is_cross_entropy = True  # in eval mode (what fit reports), see above

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float = 0.5,
                 temperature: float = 2.0, fused: bool = True):
        super().__init__()
        check_same_vocabulary(student, teacher)
        self.student, self.alpha, self.temperature = student, alpha, temperature
        self.fused = fused
        teacher.eval().requires_grad_(False)
        self._teacher = [teacher]  # a plain list: not a submodule, so never saved or optimised

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.student.training:
            logits = self.student(inputs)
            return F.cross_entropy(logits.flatten(0, -2).float(), targets.reshape(-1),
                                   ignore_index=-100)
        if (self.fused and fusable_head(self.student.out_head)
                and fusable_head(self.teacher.out_head)):
            # neither model's (B*T, V) logits are ever materialised (nn/loss.py); the hidden
            # states first: under FSDP they gather the heads too
            v = self.student.cfg.vocab_size
            with torch.no_grad():
                t_hidden = self.teacher.hidden_states(inputs)
            s_hidden = self.student.hidden_states(inputs)
            ws, wt = head_weight(self.student.out_head), head_weight(self.teacher.out_head)
            return linear_distillation_loss(s_hidden, ws[:v], t_hidden, wt[:v], targets,
                                            self.alpha, self.temperature)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return distillation_loss(self.student(inputs), teacher_logits, targets, self.alpha,
                                 self.temperature)

    def batch_weight(self, inputs, targets: torch.Tensor) -> torch.Tensor:
        """Target tokens (the loss is a per-token mean)."""
        return (targets != -100).sum()


def check_same_vocabulary(student: nn.Module, teacher: nn.Module) -> None:
    sv, tv = student.cfg.vocab_size, teacher.cfg.vocab_size
    if sv != tv:
        raise ValueError(f"student vocabulary ({sv:,}) differs from the teacher's ({tv:,}): "
                         "distillation needs the same tokenizer")


def student_from_teacher(teacher: nn.Module, n_layer: int) -> nn.Module:
    """The teacher's architecture with ``n_layer`` blocks, initialised from evenly spaced
    teacher blocks (every other one for half the depth) plus its embeddings, final norm and
    head."""
    L = teacher.cfg.n_layer
    if not 1 <= n_layer < L:
        raise ValueError(f"a student needs 1 to {L - 1} layers (the teacher has {L}), "
                         f"got {n_layer}")
    cfg = dataclasses.replace(teacher.cfg, n_layer=n_layer)
    student = type(teacher)(cfg)
    picks = [i * L // n_layer for i in range(n_layer)]
    state = {}
    for k, v in teacher.state_dict().items():
        if k.startswith("trf_blocks."):
            _, i, rest = k.split(".", 2)
            if int(i) in picks:
                state[f"trf_blocks.{picks.index(int(i))}.{rest}"] = v
        else:
            state[k] = v
    student.load_state_dict(state)
    return student.to(next(teacher.parameters()).device)

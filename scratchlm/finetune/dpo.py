"""Direct preference optimization (Rafailov et al., 2023): tune a model towards preferred
answers without a reward model or sampling.

The loss of one pair, with the policy ``pi`` being trained and a frozen reference ``ref``::

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x))
                                 - (log pi(y_l|x) - log ref(y_l|x)) ] )

``y_w`` is the chosen (preferred) answer, ``y_l`` the rejected one; ``log pi(y|x)`` is the sum of
the answer tokens' log-probabilities (the prompt is not scored). ``beta * (log pi - log ref)`` is
the implicit reward of an answer; while policy == reference both rewards are 0 and the loss is
ln 2. With LoRA the reference is the same model with its adapters switched off, so no second
copy is held in memory.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.finetune.lora import lora_modules, set_lora_enabled
from scratchlm.nn.doc_mask import DocumentMask


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean DPO loss over a batch of pairs and the mean chosen/rejected rewards (see the module
    docstring for the formula)."""
    chosen_rewards = policy_chosen_logps - ref_chosen_logps
    rejected_rewards = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_rewards - rejected_rewards)
    loss = -F.logsigmoid(logits)
    return loss.mean(), (beta * chosen_rewards).detach().mean(), (beta * rejected_rewards).detach().mean()


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                      ignore_index: int = -100, segments: torch.Tensor | None = None,
                      ) -> torch.Tensor:
    """Per row, the summed log-probability of the targets that are not ``ignore_index``.
    ``logits`` (B, T, V), ``targets`` (B, T) -> (B,). With ``segments`` (B, T) (packed rows,
    ``data.instruction.packed_instruction_collate``: sequence k's positions hold k, padding
    -1), per sequence instead -> (number of sequences,)."""
    b, t, v = logits.shape
    nll = F.cross_entropy(logits.reshape(-1, v).float(), targets.reshape(-1),
                          ignore_index=ignore_index, reduction="none")
    if segments is None:
        return -nll.view(b, t).sum(dim=-1)
    seg = segments.reshape(-1)
    real = seg >= 0
    out = nll.new_zeros(int(seg.max()) + 1)
    return -out.index_add(0, seg[real], nll[real])


def _forward(model: nn.Module, inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, segments) of a plain batch, or of packed rows (ids, segments) run with a
    document mask."""
    if isinstance(inputs, (tuple, list)):
        ids, segments = inputs
        return model(ids, DocumentMask(segments)), segments
    return model(inputs), None


def n_sequences(inputs) -> int:
    """The rows of a plain batch, or the sequences packed in (ids, segments)."""
    if isinstance(inputs, (tuple, list)):
        return int(inputs[1].max()) + 1
    return inputs.shape[0]


@contextmanager
def adapters_off(model: nn.Module):
    set_lora_enabled(model, False)
    try:
        yield
    finally:
        set_lora_enabled(model, True)


@dataclass
class PreferenceStats:
    loss: float
    chosen_reward: float
    rejected_reward: float
    margin: float  # mean of chosen - rejected reward
    accuracy: float  # share of pairs whose chosen reward is higher, a tie counting half (so
    # the untrained policy, equal to its reference, scores 50%, not 0%)


def preference_accuracy(margins: torch.Tensor, tie: float = 1e-6) -> float:
    """Share of pairs with a positive reward margin; a margin within ``tie`` of zero counts
    half (LoRA off and on at B = 0 differ by float rounding only)."""
    wins = (margins > tie).float() + 0.5 * (margins.abs() <= tie).float()
    return wins.mean().item()


class DPOLoss(nn.Module):
    """``(inputs, targets) -> loss`` for batches of 2B rows (B chosen, then B rejected; see
    ``data.instruction.PreferenceCollate``): the unit ``fit`` trains.

    ``reference``: a frozen model, or None to use ``model`` with its LoRA adapters off (the
    model must have adapters then). ``reference="copy"`` freezes a deep copy of ``model``."""

    unit = "pairs"  # what batch_weight counts (the loss plot's top axis)

    def __init__(self, model: nn.Module, beta: float = 0.1, reference: nn.Module | str | None = None):
        super().__init__()
        self.model, self.beta = model, beta
        if reference == "copy":
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        if reference is None and not lora_modules(model):
            raise ValueError("DPO without LoRA needs a reference model (reference='copy')")
        self._reference = [reference]  # a list: not registered as a submodule (not trained/saved)
        self.last: PreferenceStats | None = None

    def reference_logps(self, inputs, targets: torch.Tensor) -> torch.Tensor:
        ref = self._reference[0]
        with torch.no_grad():
            if ref is None:
                with adapters_off(self.model):
                    logits, segments = _forward(self.model, inputs)
            else:
                logits, segments = _forward(ref, inputs)
            return sequence_logprobs(logits, targets, segments=segments)

    def forward(self, inputs, targets: torch.Tensor) -> torch.Tensor:
        """``inputs``: (2B, T) rows, or packed (ids, segments) of the 2B sequences."""
        b = n_sequences(inputs) // 2
        ref = self.reference_logps(inputs, targets)
        logits, segments = _forward(self.model, inputs)
        pol = sequence_logprobs(logits, targets, segments=segments)
        loss, chosen, rejected = dpo_loss(pol[:b], pol[b:], ref[:b], ref[b:], self.beta)
        with torch.no_grad():
            margins = self.beta * ((pol[:b] - ref[:b]) - (pol[b:] - ref[b:]))
            self.last = PreferenceStats(loss.item(), chosen.item(), rejected.item(),
                                        margins.mean().item(), preference_accuracy(margins))
        return loss

    def batch_weight(self, inputs, targets) -> int:
        """Preference pairs: the loss is a mean over pairs, whatever their token counts."""
        return n_sequences(inputs) // 2


@torch.no_grad()
def evaluate_preferences(loss_module: DPOLoss, loader, device: torch.device) -> PreferenceStats:
    """Mean DPO loss, rewards, margin and preference accuracy over a loader of pair batches."""
    was_training = loss_module.model.training
    loss_module.model.eval()
    rows, n = [], 0
    for inputs, targets in loader:
        inputs = (tuple(t.to(device) for t in inputs) if isinstance(inputs, (tuple, list))
                  else inputs.to(device))
        loss_module(inputs, targets.to(device))
        k = n_sequences(inputs) // 2
        rows.append((loss_module.last, k))
        n += k
    loss_module.model.train(was_training)
    if n == 0:
        raise ValueError("no preference pairs to evaluate")

    def avg(field: str) -> float:
        return sum(getattr(s, field) * k for s, k in rows) / n

    return PreferenceStats(avg("loss"), avg("chosen_reward"), avg("rejected_reward"),
                           avg("margin"), avg("accuracy"))

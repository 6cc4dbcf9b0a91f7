"""A reward model: a language model with a one-number head, trained on preference pairs with
the Bradley-Terry loss (the reward-modelling step of RLHF, Ouyang et al., 2022):

    r = head(h_last)                          the final state of the last real token -> scalar
    P(chosen > rejected) = sigmoid(r_chosen - r_rejected)
    loss = -log sigmoid(r_chosen - r_rejected)

It is the classifier of ``finetune/classification.py`` with ``num_classes = 1``, so it saves
and loads like one. ``score_texts`` rates answers, e.g. to pick the best of N samples
(``generation/best_of.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.data.instruction import STYLES, Example, render
from scratchlm.finetune.classification import class_logits
from scratchlm.nn.doc_mask import DocumentMask


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """(B,) rewards of the chosen and the rejected answers -> mean -log sigmoid(margin)."""
    return -F.logsigmoid(chosen - rejected).mean()


def rewards(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, T) ids and (N,) real lengths -> (N,) rewards."""
    return class_logits(model, ids, lengths).squeeze(-1).float()


def batch_rewards(model: nn.Module, inputs) -> torch.Tensor:
    """The rewards of a ``RewardCollate`` batch's inputs: (ids, lengths) rows, or packed
    (ids, segments, last): the sequences side by side, each attending only to itself
    (``nn/doc_mask.py``), scored at its last position."""
    if len(inputs) == 2:
        return rewards(model, *inputs)
    ids, segments, last = inputs
    h = model.hidden_states(ids, DocumentMask(segments))  # (R, W, C)
    return model.out_head(h[last[:, 0], last[:, 1]]).squeeze(-1).float()


def n_rows(inputs) -> int:
    """The sequences of a ``RewardCollate`` batch (chosen and rejected)."""
    return inputs[2].shape[0] if len(inputs) == 3 else inputs[0].shape[0]


class RewardLoss(nn.Module):
    """``((ids, lengths), _) -> loss`` over a ``RewardCollate`` batch (chosen rows, then
    rejected rows)."""

    unit = "pairs"  # what batch_weight counts (the loss plot's top axis)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs, _pairs=None) -> torch.Tensor:
        r = batch_rewards(self.model, inputs)
        b = r.shape[0] // 2
        return bradley_terry_loss(r[:b], r[b:])

    def batch_weight(self, inputs, _pairs=None) -> int:
        """Preference pairs (chosen and rejected sequences)."""
        return n_rows(inputs) // 2


@dataclass
class RewardStats:
    loss: float
    accuracy: float  # share of pairs where the chosen answer gets the higher reward
    margin: float  # mean r_chosen - r_rejected
    pairs: int


@torch.no_grad()
def evaluate_rewards(model: nn.Module, loader, device, max_batches: int | None = None) -> RewardStats:
    was = model.training
    model.eval()
    losses, correct, margins, n = 0.0, 0, 0.0, 0
    for i, (inputs, _) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        r = batch_rewards(model, [t.to(device) for t in inputs])
        b = r.shape[0] // 2
        diff = r[:b] - r[b:]
        losses += -F.logsigmoid(diff).sum().item()
        correct += (diff > 0).sum().item()
        margins += diff.sum().item()
        n += b
    model.train(was)
    n = max(n, 1)
    return RewardStats(losses / n, correct / n, margins / n, n)


@torch.no_grad()
def score_texts(model: nn.Module, sequences: list[list[int]], batch_size: int = 8) -> list[float]:
    """Rewards of already-tokenized sequences (each rendered like the training data)."""
    device = next(model.parameters()).device
    model.eval()
    out: list[float] = []
    ctx = model.cfg.context_length
    for i in range(0, len(sequences), batch_size):
        chunk = [s[-ctx:] or [0] for s in sequences[i:i + batch_size]]
        ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s)
        lengths = torch.tensor([len(s) for s in chunk])
        out += rewards(model, ids.to(device), lengths.to(device)).tolist()
    return out


class RewardScorer:
    """Rates answers to a prompt with a reward model, rendering each (prompt, answer) pair in
    the prompt style the model was trained on (``reward.json`` in its folder)."""

    def __init__(self, model: nn.Module, tokenizer, style: str = "alpaca"):
        self.model, self.tokenizer, self.style = model.eval(), tokenizer, style

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> "RewardScorer":
        from scratchlm.checkpoints.load import load_model_and_tokenizer

        meta = Path(folder) / "reward.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{folder}: no reward.json; is this the final/ folder of "
                                    "`scratchlm finetune reward`?")
        style = cls.read_style(meta)  # before the weights load: a bad file fails fast
        model, tok = load_model_and_tokenizer(str(folder), device=device)
        if model.out_head.out_features != 1:
            raise ValueError(f"{folder}: the head has {model.out_head.out_features} outputs; "
                             "a reward model has one")
        return cls(model, tok, style)

    @staticmethod
    def read_style(path: Path) -> str:
        """The prompt style ``reward.json`` names, checked: a style the model was not trained
        on would rate every answer in a prompt format it never saw."""
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a reward model's settings ({e})") from None
        style = meta.get("style") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or "style" not in meta:
            raise ValueError(f"{path}: 'style' is missing (one of {', '.join(STYLES)})")
        if not isinstance(style, str) or style not in STYLES:
            raise ValueError(f"{path}: 'style' must be one of {', '.join(STYLES)}, got {style!r}")
        return style

    @staticmethod
    def write_style(folder: str | Path, style: str) -> None:
        """``reward.json``, what ``load`` reads beside a reward model's weights."""
        (Path(folder) / "reward.json").write_text(json.dumps({"style": style}, indent=2))

    def save(self, folder: str | Path) -> None:
        """The model, its tokenizer and ``reward.json`` in ``folder``: what ``load`` reads."""
        from scratchlm.checkpoints.ours import save_pretrained
        from scratchlm.tokenizers import save_tokenizer

        save_pretrained(self.model, folder)
        save_tokenizer(self.tokenizer, folder)
        self.write_style(folder, self.style)

    def __call__(self, prompt: str, answers: list[str]) -> list[float]:
        return self.pairs([prompt] * len(answers), answers)

    def pairs(self, prompts: list[str], answers: list[str]) -> list[float]:
        """The reward of each (prompt, answer) pair, scored in batches."""
        seqs = []
        for p, a in zip(prompts, answers, strict=True):
            ex = Example([{"role": "user", "content": p}, {"role": "assistant", "content": a}])
            seqs.append(render(ex, self.tokenizer, self.style)[0])
        return score_texts(self.model, seqs)

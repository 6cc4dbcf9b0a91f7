"""Token classification (named entities, parts of speech): a per-token head on any of our
models, trained on word tags (``data/conll.py``) with LoRA or full finetuning.

    tokens -> transformer -> final norm -> out_head: Linear(n_embd, num_tags)  at every position

The head replaces the language-model head, exactly as in classification; the difference is
that every (first sub-token) position is scored instead of the last one. A causal model sees
only the words to the left of each position, so tags that depend on later words are harder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.data.conll import IGNORE_INDEX, Sentence, encode_sentence


def tag_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, T, num_tags)."""
    return model.out_head(model.hidden_states(ids))


class TaggingLoss(nn.Module):
    """``(ids, labels) -> mean cross-entropy`` over the labelled positions (labels != -100)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = tag_logits(self.model, ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                               ignore_index=IGNORE_INDEX)

    def batch_weight(self, ids, labels: torch.Tensor) -> torch.Tensor:
        """Labelled tokens (a word's first sub-token)."""
        return (labels != IGNORE_INDEX).sum()


@torch.no_grad()
def predict_tags(model: nn.Module, loader, tags: list[str], device) -> tuple[list, list]:
    """(gold, predicted) tag sequences per sentence, one tag per (kept) word: the labels and
    argmax predictions at each word's first sub-token."""
    was = model.training
    model.eval()
    gold, pred = [], []
    for ids, labels in loader:
        best = tag_logits(model, ids.to(device)).argmax(-1).cpu()
        for row_labels, row_pred in zip(labels, best):
            keep = row_labels != IGNORE_INDEX
            gold.append([tags[i] for i in row_labels[keep].tolist()])
            pred.append([tags[i] for i in row_pred[keep].tolist()])
    model.train(was)
    return gold, pred


@torch.no_grad()
def tag_words(model: nn.Module, tokenizer, words: list[str], tags: list[str]) -> list[str]:
    """The predicted tag of each word of a sentence."""
    ids, labels = encode_sentence(Sentence(words, ["O"] * len(words)), tokenizer, {"O": 0},
                                  model.cfg.context_length)
    device = next(model.parameters()).device
    model.eval()
    best = tag_logits(model, torch.tensor([ids], device=device))[0].argmax(-1).tolist()
    return [tags[best[i]] for i, lab in enumerate(labels) if lab != IGNORE_INDEX]

"""What one row's logits go through before its token is drawn, beyond temperature and top-k/p:
a bias per token (OpenAI's ``logit_bias``), presence and frequency penalties over the tokens the
row has generated, and a constraint (``generation/grammar.py``) that says which tokens may come
next; and the log-probabilities of the chosen token and its best alternatives under the model's
own distribution. Ids in, ids out: the tokenizer is the constraint's business, not this file's.

    logits (V,) --+ logit_bias --- penalties: - count*frequency - (count > 0)*presence
                  --- constraint: tokens it does not allow -> -inf --> sample_next

Rows that ask for none of this have no ``RowControl`` and pay nothing.

Not here: temperature, top-k and top-p (``sampling.py``), the rows themselves (``slots.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI allows


class Constraint(Protocol):
    """One row's state in a grammar: which tokens may come next, and the token that came."""

    def allowed(self) -> torch.Tensor: ...  # (V,) bool; raises ValueError if none is

    def accept(self, token: int) -> None: ...

    @property
    def finished(self) -> bool: ...  # nothing but the end may follow


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the ``k`` most likely tokens' (id, log-prob),
    under the model's distribution before any bias, penalty, mask or temperature."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def token_logprob(logits: torch.Tensor, token: int, k: int = 0) -> TokenLogprob:
    """(V,) logits -> the log-softmax at ``token`` and the top ``k``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if k > 0:
        values, ids = torch.topk(lp, min(k, lp.shape[-1]))
        top = list(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token, float(lp[token]), top)


def penalize(logits: torch.Tensor, counts: torch.Tensor, presence: float,
             frequency: float) -> torch.Tensor:
    """OpenAI's penalties: ``logits - counts * frequency - (counts > 0) * presence``, where
    ``counts`` (V,) says how often each token was generated so far."""
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


class RowControl:
    """One row's bias, penalties and constraint (``process``), updated with each token it
    samples (``accept``)."""

    def __init__(self, params, vocab: int, device: torch.device):
        self.vocab = vocab
        self.bias = None
        if params.logit_bias:
            ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=device)
            if int(ids.min()) < 0 or int(ids.max()) >= vocab:
                raise ValueError(f"logit_bias names a token outside the vocabulary of {vocab}")
            values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32,
                                  device=device)
            self.bias = (ids, values)
        self.presence, self.frequency = params.presence_penalty, params.frequency_penalty
        self.counts = (torch.zeros(vocab, dtype=torch.float32, device=device)
                       if self.presence or self.frequency else None)
        self.constraint: Constraint | None = (params.grammar.matcher() if params.grammar
                                              is not None else None)

    @classmethod
    def create(cls, params, vocab: int, device: torch.device) -> RowControl | None:
        """A control for a row with these settings, or None when they ask for nothing here."""
        if not (params.logit_bias or params.presence_penalty or params.frequency_penalty
                or params.grammar is not None):
            return None
        return cls(params, vocab, device)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The (V,) logits to sample from: biased, penalized, masked."""
        out = logits.float()
        if self.bias is not None:
            out = out.index_add(0, *self.bias)
        if self.counts is not None:
            out = penalize(out, self.counts, self.presence, self.frequency)
        if self.constraint is not None:
            allowed = self.constraint.allowed().to(out.device)  # raises when it allows none
            out = torch.where(allowed, out, float("-inf"))
        return out

    def accept(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1
        if self.constraint is not None:
            self.constraint.accept(token)

    @property
    def finished(self) -> bool:
        """The constraint is complete: no token but the end may follow."""
        return self.constraint is not None and self.constraint.finished

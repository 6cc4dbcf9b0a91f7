"""Language modelling scores of a text: perplexity and bits per byte.

    score = score_text(model, tokenizer, text)   # LMScore(tokens, bytes, nll, ppl, bpb, ...)

Every token of the text is predicted once: the text is cut into windows of at most
``max_length`` tokens that advance by ``stride`` (default: ``max_length``, no overlap), and
each window scores only the tokens no earlier window scored, with the rest of the window as
left context (Hugging Face's sliding-window perplexity). The first token is predicted from the
tokenizer's end-of-text / BOS token when it has one (as lm-evaluation-harness's
``loglikelihood_rolling`` does), so all of the text counts.

Bits per byte, ``nll / (ln 2 * UTF-8 bytes)``, does not depend on the tokenizer: models with
different vocabularies compare on it; perplexity is per token of this tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm


@dataclass
class LMScore:
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text
    nll: float  # summed negative log-likelihood (nats)
    ppl: float  # exp(nll / tokens)
    bpb: float  # nll / (ln 2 * bytes)
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)


def prefix_token(tokenizer) -> int | None:
    """The token that stands before a text: end-of-text, else BOS, else None."""
    for name in ("eos_id", "bos_id"):
        i = getattr(tokenizer, name, None)
        if i is not None:
            return i
    return None


def windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over ``n`` positions: every
    position in [1, n) is scored exactly once, with up to ``max_length`` tokens of input."""
    if max_length < 1 or not 1 <= stride <= max_length:
        raise ValueError(f"need max_length >= 1 and 1 <= stride <= max_length, got "
                         f"{max_length}, {stride}")
    out, begin, scored = [], 0, 1
    while scored < n:
        end = min(begin + max_length + 1, n)  # inputs [begin, end-1), targets [begin+1, end)
        out.append((begin, end, scored))
        scored = end
        begin = max(begin + stride, end - max_length - 1)  # the next window ends past this one
    return out


@torch.no_grad()
def score_ids(model: nn.Module, ids: list[int], max_length: int | None = None,
              stride: int | None = None, progress: bool = False) -> tuple[float, int, int]:
    """(summed NLL, tokens scored, windows) of ``ids[1:]`` given what precedes each."""
    max_length = max_length or model.cfg.context_length
    max_length = min(max_length, model.cfg.context_length)
    stride = stride or max_length
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    spans = windows(len(ids), max_length, stride)
    for begin, end, first in tqdm(spans, desc="scoring", unit="window", disable=not progress):
        x = torch.tensor([ids[begin:end - 1]], device=device)
        y = torch.tensor(ids[begin + 1:end], device=device)
        logits = model(x)[0, first - begin - 1:].float()  # positions predicting [first, end)
        nll += F.cross_entropy(logits[:, : model.cfg.vocab_size], y[first - begin - 1:],
                               reduction="sum").item()
        count += end - first
    model.train(was_training)
    return nll, count, len(spans)


def score_text(model: nn.Module, tokenizer, text: str, max_length: int | None = None,
               stride: int | None = None, progress: bool = True) -> LMScore:
    """Perplexity and bits per byte of ``text`` (see the module docstring)."""
    if not text:
        raise ValueError("cannot score an empty text")
    ids = tokenizer.encode(text)
    first = prefix_token(tokenizer)
    ids = ([first] if first is not None else []) + ids
    if len(ids) < 2:
        raise ValueError("the text has too few tokens to score")
    nll, count, n = score_ids(model, ids, max_length, stride, progress)
    nbytes = len(text.encode("utf-8"))
    return LMScore(tokens=count, bytes=nbytes, nll=nll, ppl=math.exp(nll / count),
                   bpb=nll / (math.log(2) * nbytes), windows=n)

"""Bits per byte and perplexity: every token predicted once, and the numbers a hand
computation gives."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.evaluate.lm import score_text, windows
from scratchlm.models.registry import build_model, preset


@pytest.mark.parametrize("n,length,stride", [(10, 4, 4), (10, 4, 2), (5, 8, 8), (11, 3, 1),
                                             (2, 1, 1), (100, 7, 3)])
def test_windows_score_every_position_once_within_the_context(n, length, stride):
    spans = windows(n, length, stride)
    assert [p for _, end, first in spans for p in range(first, end)] == list(range(1, n))
    assert all(end - 1 - begin <= length and begin < first for begin, end, first in spans)


def _model():
    torch.manual_seed(0)
    return build_model(preset("gpt-tiny")[1]).eval()


def test_bits_per_byte_equals_a_hand_computation(gpt2_tok):
    model = _model()
    text = "Hello, world! Every effort moves you, naïve café."
    ids = [gpt2_tok.eos_id] + gpt2_tok.encode(text)  # the first token after <|endoftext|>
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], -1)
    nll = -sum(float(logp[i, t]) for i, t in enumerate(ids[1:]))
    got = score_text(model, gpt2_tok, text, progress=False)
    assert got.tokens == len(ids) - 1 and got.bytes == len(text.encode())
    assert got.nll == pytest.approx(nll, rel=1e-5)
    assert got.bpb == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)
    assert got.ppl == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)


def test_sliding_windows_give_each_token_its_left_context(gpt2_tok, verdict_text):
    model = _model()
    text = verdict_text[:3000]
    ids = [gpt2_tok.eos_id] + gpt2_tok.encode(text)
    got = score_text(model, gpt2_tok, text, max_length=64, stride=16, progress=False)
    nll = 0.0  # token t predicted from up to 64 tokens, exactly as the windows cut them
    with torch.no_grad():
        for begin, end, first in windows(len(ids), 64, 16):
            logp = torch.log_softmax(model(torch.tensor([ids[begin:end - 1]]))[0], -1)
            nll -= sum(float(logp[p - begin - 1, ids[p]]) for p in range(first, end))
    assert got.nll == pytest.approx(nll, rel=1e-5) and got.windows > 10
    plain = score_text(model, gpt2_tok, text, max_length=64, progress=False)
    assert plain.tokens == got.tokens and plain.windows < got.windows


def test_an_empty_text_is_refused(gpt2_tok):
    with pytest.raises(ValueError, match="empty text"):
        score_text(_model(), gpt2_tok, "")

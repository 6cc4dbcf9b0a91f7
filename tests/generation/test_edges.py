"""Sampling is total over every setting validation admits, one row's failure ends that row
alone, and streaming text costs each token's text, not the whole sequence's."""

from __future__ import annotations

import time

import pytest
import torch

from scratchlm.generation import slots as slots_module
from scratchlm.generation.batcher import Batcher
from scratchlm.generation.engine import SamplingParams, TextStream
from scratchlm.generation.sampling import sample_next
from scratchlm.tokenizers import get_tokenizer

from test_batcher import Collector, engine


@pytest.mark.parametrize("temperature, top_p", [(1e-300, None), (5e-39, None), (1e-45, 0.9),
                                                (1.0, 1e-46), (2.0, 1e-300), (1e-300, 1e-300)])
def test_tiny_temperatures_and_top_p_give_the_best_token(temperature, top_p):
    """Before: logits / 1e-300 overflowed to inf - inf = nan, and a top_p below float32's
    smallest number dropped every token; both drew token id V (outside the vocabulary)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 5
    g = torch.Generator().manual_seed(1)
    got = sample_next(logits, temperature, None, top_p, g)
    assert torch.equal(got, logits.argmax(-1, keepdim=True))


def test_nan_logits_raise_instead_of_drawing_outside_the_vocabulary():
    logits = torch.full((1, 10), float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        sample_next(logits, 1.0)


def test_one_rows_failure_ends_that_row_alone(monkeypatch):
    """A fault injected into one row's sampling (temperature 0.123 here): that request ends with
    an error, the one decoding beside it goes on to its own end, unchanged."""
    real = slots_module.sample_next

    def faulty(logits, temperature, *args):
        if temperature == 0.123:
            raise RuntimeError("injected")
        return real(logits, temperature, *args)

    eng = engine()
    alone = eng.generate([[1, 2, 3]], SamplingParams(max_new_tokens=12))[0]
    monkeypatch.setattr(slots_module, "sample_next", faulty)
    b = Batcher(eng, max_batch=4)
    good, bad = Collector(), Collector()
    b.submit([1, 2, 3], SamplingParams(max_new_tokens=12), good)
    b.submit([4, 5], SamplingParams(max_new_tokens=12, temperature=0.123), bad)
    assert good.done.wait(60) and bad.done.wait(60)
    b.close()
    assert bad.reason == "error: injected" and bad.tokens == []
    assert good.reason == "length" and good.tokens == list(alone)


@pytest.fixture(scope="module")
def tok(tiny_chat_model):
    return get_tokenizer(str(tiny_chat_model(context_length=64)))


def reference(tok, ids, stops):
    """What a stream should show: the text up to the first stop string."""
    text = tok.decode(ids)
    cuts = [text.find(s) for s in stops if s in text]
    return text[:min(cuts)] if cuts else text


@pytest.mark.parametrize("text, stops", [
    ("The capital of France is Paris. The capital of Spain is Madrid.", ["Spain"]),
    ("aaa aab aac", ["aab a", "b aac"]),
    ("Caf\u00e9 \u2603 snow \u2603\u2603 man", ["\u2603\u2603"]),
    ("no stop here at all", ["zzz", "here at x"]),
    ("x" * 50, ["xxxxy"]),
])
def test_the_stream_shows_the_text_up_to_the_first_stop(tok, text, stops):
    ids = tok.encode(text)
    stream = TextStream(tok, stops)
    shown = "".join(stream.push(i) for i in ids) + stream.finish()
    assert shown == reference(tok, ids, stops)


def test_long_stop_strings_cost_little_per_token(tok):
    """Before: each token decoded the whole sequence and compared every prefix of every stop
    string with the text's end (quadratic in the stop's length): with 4 stops of 20,000
    characters, 200 tokens took minutes."""
    ids = tok.encode("word " * 200)
    stops = [("word " * 4000)[:-1] + c for c in "abcd"]
    stream = TextStream(tok, stops)
    t0 = time.perf_counter()
    shown = "".join(stream.push(i) for i in ids) + stream.finish()
    assert time.perf_counter() - t0 < 2
    assert shown == tok.decode(ids)

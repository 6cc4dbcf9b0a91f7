"""Corpus-scale BPE training (tokenizers/bpe_train.py) gives the merges of the book's readable
trainer (BPETokenizer.train), merge for merge, with the C loop and without it."""

from __future__ import annotations

import random

import pytest

from scratchlm.tokenizers.bpe import BPETokenizer
from scratchlm.tokenizers.bpe_train import count_words, train_bpe


def _corpora(verdict_text):
    rng = random.Random(0)
    alphabet = "ab cdé\n  z日本.,!1234 aab"
    noise = "".join(rng.choice(alphabet) for _ in range(20000))
    repeats = "aaaa aaa aa a " * 200 + "abab ababab " * 100  # overlapping pairs and ties
    return {"verdict": verdict_text, "noise": noise, "repeats": repeats}


@pytest.mark.parametrize("name", ["verdict", "noise", "repeats"])
@pytest.mark.parametrize("native", [True, False])
def test_the_merges_of_the_readable_trainer(name, native, verdict_text, monkeypatch):
    import scratchlm.tokenizers.bpe_train as bt

    text = _corpora(verdict_text)[name]
    if native:
        assert bt._native() is not None  # the C loop is built and used
    else:
        monkeypatch.setattr(bt, "_native", lambda: None)
    for vocab in (300, 1000):
        want = BPETokenizer.train(text, vocab, progress=False)
        # the same text as several documents split at end-of-text, streamed
        docs = text.split("<|endoftext|>")
        got = train_bpe(iter(docs), vocab, workers=2, progress=False)
        assert got.merges == want.merges, (name, vocab)
        assert got.special_tokens == want.special_tokens
        sample = text[:2000]
        assert got.encode(sample) == want.encode(sample)


def test_documents_never_join(verdict_text):
    """Two documents are counted apart: "ab" ending one and "cd" starting the next stay two
    words, as if end-of-text stood between them."""
    counts = count_words(["xx ab", "cd yy"], workers=1, progress=False)
    assert counts["cd"] == 1 and "abcd" not in counts


def test_more_merges_than_pairs_stop_early():
    tok = train_bpe(["ab ab ab"], 10_000, workers=1, progress=False)
    assert len(tok.merges) == len(BPETokenizer.train("ab ab ab", 10_000, progress=False).merges)


def test_the_command_reads_corpora_in_any_format(tmp_path, verdict_text):
    import json
    import subprocess
    import sys

    import zstandard

    from conftest import ROOT

    docs = [p for p in verdict_text.split("\n\n") if p.strip()]
    lines = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    r = subprocess.run([sys.executable, "-m", "scratchlm", "train-tokenizer", "--data",
                        str(tmp_path / "c.jsonl.zst"), "--vocab-size", "400", "--out",
                        str(tmp_path / "tok.json"), "--workers", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tok = BPETokenizer.load(tmp_path / "tok.json")
    want = BPETokenizer.train("<|endoftext|>".join(docs), 400, progress=False)
    assert tok.merges == want.merges

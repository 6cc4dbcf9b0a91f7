"""BPE training at corpus scale against Hugging Face ``tokenizers``' BpeTrainer, on the same text
and pre-tokenizer: time (goal <= 1.0x) and peak RSS (goal <= 1.0x).

    python benchmarks/bpe_train.py [--mb 100] [--vocab 32768]

The corpus: documents of words drawn from a Zipf law over a large vocabulary of made-up words
(syllables joined), with numbers and punctuation, so that it has the long tail of distinct
words a real corpus has (repeating one book would not). Each trainer runs in its own process
(peak RSS: the sum over it and its workers, benchmarks/peak_rss.py), ours and HF's alternating, twice each; the best time of each is kept.
Both use the GPT-2 pre-tokenizer (HF: ByteLevel(use_regex=True)). Prints the ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

OURS = """
import json, sys, time
from scratchlm.data.documents import file_documents
from scratchlm.tokenizers.bpe_train import train_bpe
t0 = time.perf_counter()
tok = train_bpe((d.text for d in file_documents(sys.argv[1])), int(sys.argv[2]), progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "merges": len(tok.merges)}))
"""

HF = """
import json, sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from scratchlm.data.documents import file_documents
t0 = time.perf_counter()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
trainer = trainers.BpeTrainer(vocab_size=int(sys.argv[2]), special_tokens=["<|endoftext|>"],
                              show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator((d.text for d in file_documents(sys.argv[1])), trainer)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "merges": tok.get_vocab_size() - 257}))
"""


def write_corpus(path: Path, mb: int, seed: int = 0) -> None:
    """JSON Lines of documents, ``mb`` MB of text."""
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai",
                                                               "ou", "er", "an", "in")]
    n_words = 1_000_000
    parts = rng.integers(1, 5, n_words)
    picks = rng.integers(0, len(syllables), parts.sum())
    words, at = [], 0
    for n in parts:
        words.append("".join(syllables[i] for i in picks[at:at + n]))
        at += n
    zipf = 1.0 / np.arange(1, n_words + 1) ** 1.05
    zipf /= zipf.sum()
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < mb * 1e6:
            ids = rng.choice(n_words, size=2000, p=zipf)
            out = []
            for k, i in enumerate(ids):
                w = words[i].capitalize() if k % 17 == 0 else words[i]
                out.append(w + (", " if k % 11 == 5 else ". " if k % 13 == 7 else " "))
                if k % 97 == 3:
                    out.append(f"{int(rng.integers(0, 100000))} ")
            text = "".join(out)
            f.write(json.dumps({"text": text}) + "\n")
            written += len(text.encode())


def run(code: str, corpus: Path, vocab: int) -> dict:
    from peak_rss import run_measured

    out, peak = run_measured([sys.executable, "-c", code, str(corpus), str(vocab)])
    return {**json.loads(out.strip().splitlines()[-1]), "rss_mb": peak}


def main():
    import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=32768)
    args = ap.parse_args()
    print(f"ISA: {machine.isa()}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "corpus.jsonl"
        write_corpus(corpus, args.mb)
        print(f"corpus: {corpus.stat().st_size / 1e6:.0f} MB of JSON Lines, vocab {args.vocab}")
        best: dict[str, dict] = {}
        for _ in range(2):
            for name, code in (("scratchlm", OURS), ("hf tokenizers", HF)):
                res = run(code, corpus, args.vocab)
                if name not in best or res["seconds"] < best[name]["seconds"]:
                    best[name] = res
                print(f"  {name:14s} {res['seconds']:7.1f} s, {res['merges']} merges, peak RSS "
                      f"{res['rss_mb']:.0f} MB (all its processes)")
        ours, hf = best["scratchlm"], best["hf tokenizers"]
        print(f"time ours / HF = {ours['seconds'] / hf['seconds']:.2f} (goal <= 1.0); "
              f"peak RSS ours / HF = {ours['rss_mb'] / hf['rss_mb']:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()

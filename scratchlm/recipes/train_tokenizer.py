"""``scratchlm train-tokenizer``: the book's byte-level BPE trained from scratch on text
files (``tokenizers/bpe.py``)."""

from __future__ import annotations

from pathlib import Path

from scratchlm.recipes.configs import TrainTokenizerConfig  # noqa: F401 (its config)


def main(cfg: TrainTokenizerConfig) -> dict:
    from scratchlm.tokenizers import BPETokenizer

    if not cfg.data or not cfg.out:
        raise ValueError("train-tokenizer needs --data FILE... and --out FILE")
    text = "".join(Path(f).read_text(encoding="utf-8") for f in cfg.data)
    tok = BPETokenizer.train(text, cfg.vocab_size)
    tok.save(cfg.out)
    print(f"{len(tok.merges):,} merges, vocab {tok.vocab_size:,} -> {cfg.out}")
    return {"merges": len(tok.merges), "vocab_size": tok.vocab_size}

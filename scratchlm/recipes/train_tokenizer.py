"""``scratchlm train-tokenizer``: a byte-level BPE trained from scratch on a corpus of any size
and format (``tokenizers/bpe_train.py``: the merges of the book's readable trainer in
``tokenizers/bpe.py``, counted in parallel and merged in C)."""

from __future__ import annotations

from scratchlm.recipes.configs import TrainTokenizerConfig  # noqa: F401 (its config)


def main(cfg: TrainTokenizerConfig) -> dict:
    from scratchlm.data.documents import mix_documents, resolve_source
    from scratchlm.data.mixtures import expand_mixtures
    from scratchlm.tokenizers.bpe_train import train_bpe

    if not cfg.data or not cfg.out:
        raise ValueError("train-tokenizer needs --data FILE... and --out FILE")
    sources = [resolve_source(d) for d in expand_mixtures(cfg.data)]
    texts = (doc.text for doc in mix_documents(sources, cfg.text_field))
    tok = train_bpe(texts, cfg.vocab_size, workers=cfg.workers)
    tok.save(cfg.out)
    print(f"{len(tok.merges):,} merges, vocab {tok.vocab_size:,} -> {cfg.out}")
    return {"merges": len(tok.merges), "vocab_size": tok.vocab_size}

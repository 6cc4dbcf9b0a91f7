"""``scratchlm train-tokenizer``: a byte-level BPE trained from scratch on a corpus of any size
and format (``tokenizers/bpe_train.py``: the merges of the book's readable trainer in
``tokenizers/bpe.py``, counted in parallel and merged in C)."""

from __future__ import annotations

from scratchlm.recipes.configs import TrainTokenizerConfig  # noqa: F401 (its config)


def main(cfg: TrainTokenizerConfig) -> dict:
    from scratchlm.data.documents import mix_documents, resolve_source
    from scratchlm.data.mixtures import expand_mixtures
    from scratchlm.export.vocab import byte_bpe
    from scratchlm.tokenizers import save_tokenizer
    from scratchlm.tokenizers.bpe import EOT
    from scratchlm.tokenizers.bpe_train import train_bpe
    from scratchlm.tokenizers.chat import CHATML_TEMPLATE, CHATML_TOKENS

    if not cfg.data or not cfg.out:
        raise ValueError("train-tokenizer needs --data FILE... and --out FILE")
    sources = [resolve_source(d) for d in expand_mixtures(cfg.data)]
    texts = (doc.text for doc in mix_documents(sources, cfg.text_field))
    specials = (EOT, *CHATML_TOKENS) if cfg.chat else (EOT,)
    tok = train_bpe(texts, cfg.vocab_size, special_tokens=specials, workers=cfg.workers)
    if cfg.chat:  # the same vocabulary as a Hugging Face tokenizer with its chat template
        vocab = byte_bpe(tok)
        vocab.chat_template = CHATML_TEMPLATE
        save_tokenizer(vocab.to_hf(), cfg.out)
    else:
        tok.save(cfg.out)
    print(f"{len(tok.merges):,} merges, vocab {tok.vocab_size:,} -> {cfg.out}")
    return {"merges": len(tok.merges), "vocab_size": tok.vocab_size}

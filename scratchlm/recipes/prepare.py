"""``scratchlm prepare``: tokenize a corpus into memory-mapped token shards
(``data/shards.py``), the data sets scratchlm knows by name included."""

from __future__ import annotations

from pathlib import Path

from scratchlm.recipes.configs import PrepareConfig  # noqa: F401 (its config)


def main(cfg: PrepareConfig) -> dict:
    from scratchlm.data.shards import prepare
    from scratchlm.downloads.sources import SOURCES, fetch

    if not cfg.data or not cfg.out:
        raise ValueError("prepare needs --data FILE... and --out DIR")
    # registered data set names (the-verdict, tinyshakespeare) work as they do in pretrain
    files = [fetch(d) if d in SOURCES and not Path(d).exists() else d for d in cfg.data]
    meta = prepare(files, cfg.out, tokenizer=cfg.tokenizer, shard_tokens=cfg.shard_tokens,
                   workers=cfg.workers)
    print(f"{meta['num_tokens']:,} tokens in {len(meta['shards'])} shard(s) ({meta['dtype']}) "
          f"-> {cfg.out}")
    return meta

"""``scratchlm prepare``: tokenize a corpus into memory-mapped token shards
(``data/shards.py``), the data sets scratchlm knows by name included."""

from __future__ import annotations

from scratchlm.recipes.configs import PrepareConfig  # noqa: F401 (its config)


def main(cfg: PrepareConfig) -> dict:
    from scratchlm.data.shards import prepare

    if not cfg.data or not cfg.out:
        raise ValueError("prepare needs --data FILE... and --out DIR")
    meta = prepare(cfg.data, cfg.out, tokenizer=cfg.tokenizer, shard_tokens=cfg.shard_tokens,
                   workers=cfg.workers, text_field=cfg.text_field, seed=cfg.seed,
                   dedup=cfg.dedup)
    print(f"{meta['num_tokens']:,} tokens of {meta['num_documents']:,} documents in "
          f"{len(meta['shards'])} shard(s) ({meta['dtype']}) -> {cfg.out}")
    return meta

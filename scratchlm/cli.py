"""The ``scratchlm`` command: one subcommand per job, each a thin call into a recipe."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from scratchlm.recipes.demo import DemoConfig, main

    stages = args.stages.split(",") if args.stages else None
    cfg = DemoConfig(out=args.out, fast=args.fast, **({"stages": stages} if stages else {}))
    main(cfg)
    return 0


def _prepare(args) -> int:
    from scratchlm.data.shards import prepare

    meta = prepare(args.data, args.out, tokenizer=args.tokenizer, shard_tokens=args.shard_tokens,
                   workers=args.workers)
    print(f"{meta['num_tokens']:,} tokens in {len(meta['shards'])} shard(s) ({meta['dtype']}) "
          f"-> {args.out}")
    return 0


def _train_tokenizer(args) -> int:
    from pathlib import Path

    from scratchlm.tokenizers import BPETokenizer

    text = "".join(Path(f).read_text(encoding="utf-8") for f in args.data)
    tok = BPETokenizer.train(text, args.vocab_size)
    tok.save(args.out)
    print(f"{len(tok.merges):,} merges, vocab {tok.vocab_size:,} -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scratchlm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole lifecycle on embedded defaults")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--stages", default=None, help="comma-separated stages to run (default: all)")
    d.add_argument("--fast", action="store_true", help="tiny settings (CI smoke test)")
    d.set_defaults(func=_demo)

    d = sub.add_parser("prepare", help="tokenize text files into memory-mapped token shards")
    d.add_argument("--data", nargs="+", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--tokenizer", default="gpt2")
    d.add_argument("--shard-tokens", type=int, default=100_000_000)
    d.add_argument("--workers", type=int, default=None)
    d.set_defaults(func=_prepare)

    d = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer from scratch")
    d.add_argument("--data", nargs="+", required=True)
    d.add_argument("--vocab-size", type=int, default=4096)
    d.add_argument("--out", required=True)
    d.set_defaults(func=_train_tokenizer)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        # Known failure modes (bad input, missing files, downloads) end with one clear line.
        print(f"scratchlm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``scratchlm`` command: one subcommand per job, each a thin call into a recipe.

The recipes come from ``recipes/registry.py``; a recipe's flags mirror its config dataclass
and are built only for the command being run, so ``scratchlm --help`` imports no torch."""

from __future__ import annotations

import argparse
import functools
import sys


def _run_command(runner: str, cls_name: str, args) -> int:
    """Build the command's config (defaults, then --config FILE, then the flags given) and
    call ``runner`` ("module:function") with it; a runner that returns False fails (status 1)."""
    import importlib

    from scratchlm.config import build
    from scratchlm.recipes import configs

    module, fn = runner.split(":")
    result = getattr(importlib.import_module(module), fn)(
        build(getattr(configs, cls_name), args, args.config))
    return 1 if result is False else 0


def _prepare(cfg) -> None:
    from pathlib import Path

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


def _train_tokenizer(cfg) -> None:
    from pathlib import Path

    from scratchlm.tokenizers import BPETokenizer

    if not cfg.data or not cfg.out:
        raise ValueError("train-tokenizer needs --data FILE... and --out FILE")
    text = "".join(Path(f).read_text(encoding="utf-8") for f in cfg.data)
    tok = BPETokenizer.train(text, cfg.vocab_size)
    tok.save(cfg.out)
    print(f"{len(tok.merges):,} merges, vocab {tok.vocab_size:,} -> {cfg.out}")


def _judge(cfg) -> bool:
    from scratchlm.recipes.judge import main

    if not cfg.responses:
        raise ValueError("evaluate judge needs the responses file (test-with-responses.json)")
    return bool(main(cfg)["scored"])


def _tune(cfg) -> bool:
    from scratchlm.recipes.registry import tunable
    from scratchlm.recipes.tune import run_study

    if cfg.recipe not in tunable() or not cfg.space:
        raise ValueError(f"tune needs --recipe ({'|'.join(sorted(tunable()))}) and --space")
    res = run_study(cfg.recipe, cfg.trials, cfg.space, cfg.out, cfg.base_config, cfg.set,
                    cfg.seed, study_name=cfg.study_name)
    if res["best"] is None:
        print("no trial completed (all pruned or failed)")
        return False
    print(f"best: trial {res['best']} val loss {res['value']:.4f} {res['params']} -> "
          f"{cfg.out}/best-config.json")
    return True


def _run_recipe(recipe, args) -> int:
    from scratchlm.config import build

    config_cls, main = recipe.load()
    main(build(config_cls, args, args.config))  # Ctrl-C: TrainingInterrupted, exit 130 (main)
    return 0


def _add_recipe(sub, recipe, with_flags: bool) -> None:
    """A subcommand whose flags mirror the recipe's config dataclass (nested ones as
    --train.lr) and that runs its ``main(config)``; the flags (which import the recipe, and so
    torch) only when ``with_flags``: the command being run or asked for --help."""
    import functools

    from scratchlm.config import add_arguments

    d = sub.add_parser(recipe.name, help=recipe.help, description=f"{recipe.help}. Flags mirror "
                       f"{recipe.config}; nested ones as --train.lr or --lora.rank.")
    if not with_flags:
        return
    d.add_argument("--config", default=None, help="a YAML/JSON file of config values")
    config = recipe.config_class()
    if hasattr(config, "resume"):  # every training recipe: --resume alone means the latest
        d.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="continue from the latest checkpoint in --out (or the one given) "
                            "(default: none, a new run)")
    add_arguments(d, config, skip=frozenset({"resume"}))
    d.set_defaults(func=functools.partial(_run_recipe, recipe))


def _selected(argv: list[str]) -> str | None:
    """The recipe command named by ``argv`` (its first one or two words), if any."""
    from scratchlm.recipes.registry import RECIPES

    words = [a for a in argv if not a.startswith("-")][:2]
    for command in RECIPES:
        parts = command.split()
        if words[:len(parts)] == parts:
            return command
    return None


class Parser(argparse.ArgumentParser):
    """No abbreviated flags: ``--train.max_step`` is an error, never ``--train.max_steps``
    (a typo must not silently become another setting). Sub-commands inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; recipe flags are built for the recipe ``argv`` names (all of them when
    ``argv`` is None, e.g. for documentation)."""
    from scratchlm.recipes.registry import RECIPES

    selected = _selected(argv) if argv is not None else None
    from scratchlm import __version__

    p = Parser(prog="scratchlm", description=__doc__)
    p.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(group, name: str, help_text: str, cls_name: str, runner: str, **kw):
        """A command whose flags mirror a config dataclass of ``recipes/configs.py``."""
        d = group.add_parser(name, help=help_text, description=f"{help_text}. Flags mirror "
                             f"{cls_name} (--a_b or --a-b); --config FILE reads them from "
                             "YAML/JSON.")
        if argv is None or name in argv:  # the flags only for the command being run
            from scratchlm.config import add_arguments
            from scratchlm.recipes import configs

            d.add_argument("--config", default=None, help="a YAML/JSON file of config values")
            add_arguments(d, getattr(configs, cls_name), **kw)
        d.set_defaults(func=functools.partial(_run_command, runner, cls_name))
        return d

    command(sub, "demo", "run the whole lifecycle on embedded defaults", "DemoConfig",
            "scratchlm.demo:main")
    command(sub, "prepare", "tokenize text files into memory-mapped token shards",
            "PrepareConfig", "scratchlm.cli:_prepare")
    ft = sub.add_parser("finetune", help="finetune a pretrained model").add_subparsers(
        dest="method", required=True)
    for name, recipe in RECIPES.items():
        group = ft if name.startswith("finetune ") else sub
        _add_recipe(group, recipe, argv is None or name == selected)

    ev = sub.add_parser("evaluate", help="evaluate model outputs").add_subparsers(
        dest="method", required=True)
    d = command(ev, "judge", "score responses 0-100 with a judge model over HTTP",
                "JudgeConfig", "scratchlm.cli:_judge", skip=frozenset({"responses"}))
    d.add_argument("responses", nargs="?", default=None,
                   help="a test-with-responses.json (instruction/prompt, reference or output, "
                        "model_response)")
    command(ev, "run", "benchmarks: bits-per-byte, multiple choice by log-likelihood, GSM8K",
            "EvaluateConfig", "scratchlm.recipes.evaluate:main")
    d = command(ev, "compare", "two evaluations side by side with deltas", "CompareConfig",
                "scratchlm.recipes.evaluate:compare", skip=frozenset({"runs"}))
    d.add_argument("runs", nargs="*", default=argparse.SUPPRESS,
                   help="two results folders (RUN/eval)")
    command(sub, "generate", "continue a prompt with a model", "GenerateConfig",
            "scratchlm.recipes.generate:main")
    command(sub, "chat", "chat with a model in the terminal (streaming)", "ChatConfig",
            "scratchlm.recipes.chat:main")
    command(sub, "serve", "an OpenAI-compatible HTTP server with a web chat page",
            "ServeConfig", "scratchlm.serve.app:main")
    command(sub, "tune", "hyperparameter search over a recipe (Optuna, resumable)",
            "TuneConfig", "scratchlm.cli:_tune")

    command(sub, "plan", "memory, FLOPs, time and Chinchilla tokens of a run", "PlanConfig",
            "scratchlm.recipes.plan:main")
    command(sub, "train-tokenizer", "train a byte-level BPE tokenizer from scratch",
            "TrainTokenizerConfig", "scratchlm.cli:_train_tokenizer")
    return p


def resolve(argv: list[str]):
    """The config a command line would run with (defaults, --config file, flags), without
    running it; None for commands without one (tune)."""
    from scratchlm.config import build
    from scratchlm.recipes import configs

    args = build_parser(argv).parse_args(argv)
    func = args.func
    if isinstance(func, functools.partial) and func.func is _run_recipe:
        return build(func.args[0].config_class(), args, args.config)
    if isinstance(func, functools.partial) and func.func is _run_command:
        return build(getattr(configs, func.args[1]), args, args.config)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # a TrainingInterrupted says where its checkpoint is
        print(f"scratchlm {args.command}: interrupted{f': {e}' if str(e) else ''}",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted by known_error below
        # Known failure modes (bad input, damaged files, missing files, downloads) end with one
        # clear line; anything else is a bug and keeps its traceback.
        message = known_error(e)
        if message is None:
            raise
        print(f"scratchlm {args.command}: error: {message}", file=sys.stderr)
        return 2


def known_error(e: BaseException) -> str | None:
    """The one-line message for an error a user can cause (a bad value, a damaged or missing
    file, a refused pickle, bad YAML, text that is not UTF-8, a failed download); None for
    anything else."""
    import pickle

    import yaml
    from safetensors import SafetensorError

    if isinstance(e, UnicodeDecodeError):
        return (f"text that is not UTF-8 (byte {e.object[e.start:e.start + 1]!r} at offset "
                f"{e.start}: {e.reason})")
    if isinstance(e, yaml.YAMLError):
        return f"not valid YAML: {' '.join(str(e).split())}"
    if isinstance(e, (SafetensorError, pickle.UnpicklingError)):
        return f"a damaged or refused weights file: {' '.join(str(e).split())}"
    if isinstance(e, KeyError):
        return str(e.args[0]) if e.args else "missing key"
    if isinstance(e, (ValueError, OSError, RuntimeError)):
        return str(e)
    return None


if __name__ == "__main__":
    raise SystemExit(main())

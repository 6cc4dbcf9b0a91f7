"""The ``scratchlm`` command: it parses and prints errors, nothing else.

The commands come from ``recipes/registry.py``, one row each; a command's flags mirror its
config dataclass and are built only for the command being run, so ``scratchlm --help`` imports
no torch."""

from __future__ import annotations

import argparse
import functools
import sys


def _run_recipe(recipe, args) -> int:
    from scratchlm.config import build

    config_cls, run = recipe.load()
    result = run(build(config_cls, args, args.config))  # Ctrl-C: TrainingInterrupted -> 130
    return 1 if result is False else 0


def _add_recipe(sub, recipe, with_flags: bool) -> None:
    """A subcommand whose flags mirror the recipe's config dataclass (nested ones as
    --train.lr) and that runs its ``main(config)``; the flags (which import the recipe, and so
    torch) only when ``with_flags``: the command being run or asked for --help."""
    from scratchlm.config import add_arguments

    d = sub.add_parser(recipe.name, help=recipe.help, description=f"{recipe.help}. Flags mirror "
                       f"{recipe.config} (--a_b or --a-b; nested ones as --train.lr or "
                       "--lora.rank); --config FILE reads them from YAML/JSON.")
    d.set_defaults(func=functools.partial(_run_recipe, recipe))
    if not with_flags:
        return
    d.add_argument("--config", default=None, help="a YAML/JSON file of config values")
    config = recipe.config_class()
    if hasattr(config, "resume"):  # every training recipe: --resume alone means the latest
        d.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="continue from the latest checkpoint in --out (or the one given) "
                            "(default: none, a new run)")
    add_arguments(d, config, skip=frozenset({"resume"} | {f for f, _, _ in recipe.positional}))
    for name, nargs, help_text in recipe.positional:
        d.add_argument(name, nargs=nargs, help=help_text,
                       default=None if nargs == "?" else argparse.SUPPRESS)


def _selected(argv: list[str]) -> str | None:
    """The command named by ``argv`` (its first one or two words), if any."""
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
    """The parser, one sub-command per row of ``recipes/registry.py``; a command's flags are
    built only for the command ``argv`` names (all of them when ``argv`` is None, e.g. for
    documentation)."""
    from scratchlm import __version__
    from scratchlm.recipes.registry import GROUPS, RECIPES

    selected = _selected(argv) if argv is not None else None
    p = Parser(prog="scratchlm", description=__doc__)
    p.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    groups = {}
    for command, recipe in RECIPES.items():
        group = sub
        if " " in command:
            word = command.split()[0]
            if word not in groups:
                groups[word] = sub.add_parser(word, help=GROUPS[word]).add_subparsers(
                    dest="method", required=True)
            group = groups[word]
        _add_recipe(group, recipe, argv is None or command == selected)
    return p


def resolve(argv: list[str]):
    """The config a command line would run with (defaults, --config file, flags), without
    running it; None for commands without one (tune)."""
    from scratchlm.config import build

    args = build_parser(argv).parse_args(argv)
    return build(args.func.args[0].config_class(), args, args.config)


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

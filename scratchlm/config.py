"""Config dataclasses become command-line flags and YAML/JSON files.

A recipe's config is a dataclass whose fields may themselves be dataclasses (``train: TrainConfig``).
Nested fields are addressed with dots: ``--train.lr 3e-4`` on the command line, or

    train:
      lr: 3.0e-4

in a file given with ``--config run.yaml`` (flags override the file). Unknown keys are errors
that name the key, in files and on the command line alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(s: str) -> bool:
    low = s.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _coerce(value, tp, key: str):
    """Check/convert a value read from a file to the field's type."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"config key {key!r} may not be null")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (str,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        return _parse_bool(str(value))
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    if tp in (int, str) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    if tp in (int, float) and isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            pass
    raise ValueError(f"config key {key!r}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def flatten(cfg) -> dict[str, Any]:
    """{"train.lr": 3e-4, ...} for a (nested) config instance."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update({f"{f.name}.{k}": x for k, x in flatten(v).items()})
        else:
            out[f.name] = v
    return out


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict, prefix: str = ""):
    """Build ``cls`` from a nested dict; unknown keys raise ValueError naming the key."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; known keys of "
                         f"{prefix or cls.__name__}: {', '.join(sorted(names))}")
    kwargs = {}
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in data.items():
        tp = hints[name]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix + name!r} must be a mapping")
            factory = by_name[name].default_factory
            if factory is not dataclasses.MISSING:  # the recipe's own defaults, not tp's
                value = _merged(to_dict(factory()), value)
            kwargs[name] = from_dict(tp, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    obj = cls(**kwargs)
    check_bounds(obj, prefix)
    return obj


# The values each numeric setting may take, by field name (or ``Class.field`` where one name
# means different things): (low, high, low_open, high_open); None: unbounded. Checked for every
# config built from flags or files (``from_dict``); ``None`` values (optional settings) pass.
_COUNT, _NONNEG, _POSITIVE = (1, None, False, False), (0, None, False, False), (0, None, True, False)
_FRACTION, _PROBABILITY = (0, 1, False, True), (0, 1, True, False)
BOUNDS: dict[str, tuple] = {
    **dict.fromkeys(["epochs", "max_new_tokens", "batch_size", "response_batch",
                     "allowed_max_length", "last_k", "eval_batches", "max_length",
                     "num_virtual_tokens", "student_layers", "speed_batches", "concurrency",
                     "max_tokens_cap", "max_batch", "best_of", "batch", "shard_tokens", "trials",
                     "samples", "train_size", "difficulty", "limit", "context_length",
                     "n_layer", "n_embd", "n_head", "moe_num_experts", "moe_top_k",
                     "bpe_vocab_size", "vocab_size", "workers", "max_request_bytes",
                     "max_messages", "PlanLora.rank", "max_connections"], _COUNT),
    **dict.fromkeys(["retries", "shots", "test_size", "sample_tokens",
                     "LoraConfig.rank", "temperature", "length_penalty", "eps_high",
                     "GRPOSettings.beta", "tokens", "max_prompt_tokens"], _NONNEG),
    **dict.fromkeys(["timeout", "request_timeout", "max_shard_gb", "moe_capacity_factor",
                     "LoraConfig.alpha", "DPOSettings.beta", "DistillConfig.temperature"],
                    _POSITIVE),
    **dict.fromkeys(["val_fraction", "dropout", "drop_rate", "eps_low"], _FRACTION),
    **dict.fromkeys(["top_p", "mfu"], _PROBABILITY),
    "DistillConfig.alpha": (0, 1, False, False),
    "GRPOSettings.temperature": _POSITIVE,  # rollouts are sampled
    "GRPOSettings.group_size": (2, None, False, False),  # a group compares completions
    "GRPOSettings.iterations": _COUNT,  # optimizer steps per rollout
    "port": (0, 65535, False, False),
}


def check_bounds(obj, prefix: str = "") -> None:
    """Refuse a numeric field outside ``BOUNDS`` (or any NaN/infinite float), naming the key
    (``--prefix.name``) and the value."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = f"--{prefix}{f.name}"
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value}")
        rule = BOUNDS.get(f"{type(obj).__name__}.{f.name}", BOUNDS.get(f.name))
        if rule is None:
            continue
        low, high, low_open, high_open = rule
        bad = (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and (value >= high if high_open else value > high))
        if bad:
            if high is None:
                want = f"{'>' if low_open else '>='} {low}"
            else:
                want = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise ValueError(f"{key} must be {want}, got {value}")


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_file(path: str | Path) -> dict:
    """A config file (YAML or JSON) as a dict; a file that is not UTF-8, not valid YAML/JSON or
    not a mapping is a ValueError naming the file (and the line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text ({e.reason})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"{path}: {where}not valid YAML ({problem})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping")
    return data


def field_comments(cls) -> dict[str, str]:
    """{field: the comment after it in the class source} (``lr: float = 4e-4  # peak rate``),
    the help text of each flag."""
    import inspect
    import re

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        # a comment after the field, and the comment-only lines that continue it
        for m in re.finditer(r"^(\s+)(\w+)\s*:[^#\n]*#\s*(.+)$((?:\n\1\s*#.*$)*)", source,
                             re.M):
            more = " ".join(line.strip().lstrip("#").strip()
                            for line in m.group(4).splitlines() if line.strip())
            out[m.group(2)] = f"{m.group(3).strip()} {more}".strip()
    return out


# What a field means where its class gives no comment: the names every recipe shares.
COMMON_HELP = {
    "model": "a preset with weights, a model folder (a run's final/) or a .gguf file",
    "data": "a registered data set name or a file",
    "out": "the run's folder",
    "epochs": "passes over the training data",
    "seed": "random seed",
    "max_new_tokens": "tokens generated per response at most",
    "test_responses": "generate the test set's responses before and after training",
    "allowed_max_length": "tokens per example at most (longer ones are truncated)",
    "limit": "use only the first N examples (quick runs)",
    "text_col": "the text column of a CSV/TSV file",
    "label_col": "the label column of a CSV/TSV file",
    "last_k": "with trainable last_k: how many final blocks train",
    "val_fraction": "share of the data held out for validation",
    "lr": "peak learning rate",
    "min_lr": "the lowest rate of a decaying schedule",
    "warmup_steps": "steps of linear warm-up",
    "weight_decay": "AdamW's decoupled weight decay",
    "beta1": "Adam's first-moment decay",
    "beta2": "Adam's second-moment decay",
    "log_every": "steps between metrics rows",
    "eval_every": "steps between evaluations (loss, samples, plots)",
    "eval_batches": "batches per evaluation",
    "save_every": "steps between checkpoints",
    "tensorboard": "write TensorBoard logs beside metrics.csv",
    "alpha": "LoRA's scale numerator (see scaling)",
    "dropout": "dropout on the LoRA branch's input",
    "beta": "DPO's strength of the pull towards the reference",
    "temperature": "softmax temperature",
    "system": "a system message before the conversation",
    "prompt": "the text to continue",
    "stages": "which stages to run, in order",
    "fast": "shrink every stage (a smoke run in about a minute)",
    "bpe_vocab_size": "vocabulary size of the BPE trained from scratch",
    "student_layers": "blocks of the student (taken from the teacher's)",
    "tasks": "evaluation tasks (see docs/evaluation.md)",
    "judge_model": "the judge model's name on the judge server",
    "url": "the judge server's base URL",
    "api_key": "the judge server's API key (default: OPENAI_API_KEY)",
    "concurrency": "requests in flight at once",
    "timeout": "seconds per request",
    "retries": "retries of a failed request",
    "batch": "sequences per step",
    "mfu": "model FLOPs utilisation assumed for the time",
    "grad_checkpointing": "recompute block activations in backward",
    "tokenizer": "gpt2, a tokenizer file or a model folder",
    "shard_tokens": "tokens per shard file",
    "workers": "processes tokenizing in parallel",
    "n_embd": "embedding width",
    "n_head": "attention heads",
    "drop_rate": "dropout rate",
    "qkv_bias": "biases on the query/key/value projections",
    "tie_embeddings": "the output head shares the token embedding",
    "moe_top_k": "experts per token",
    "moe_capacity_factor": "tokens an expert takes, as a multiple of its fair share",
    "sample_prompt": "the prompt of the samples printed at each evaluation",
    "sample_tokens": "tokens per sample (0: no samples)",
    "num_virtual_tokens": "soft-prompt length in tokens",
    "adapter": "a LoRA adapter folder applied on top of the model",
    "host": "address to listen on",
    "port": "port to listen on",
    "max_batch": "requests decoded together at most",
    "val": "a validation file (default: split off the training file)",
    "test": "a test file (default: split off the training file)",
    "vocab_size": "vocabulary size",
    "study_name": "the Optuna study's name (resume it by name)",
}


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "",
                  skip: frozenset[str] = frozenset(), defaults=None) -> None:
    """One ``--a.b`` flag per leaf field (defaults left as None: 'not given'), its help the
    field's comment and default; fields named in ``skip`` are left to the caller's own
    flags."""
    hints = _field_types(cls)
    comments = field_comments(cls)
    if defaults is None and not prefix and all(
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            for f in dataclasses.fields(cls)):
        defaults = cls()  # a nested config shows its parent's defaults (a recipe's own lr)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if name in skip:
            continue
        if _is_dataclass_type(tp):
            add_arguments(parser, tp, prefix=name + ".",
                          defaults=getattr(defaults, f.name) if defaults is not None else None)
            continue
        base, _ = _unwrap_optional(tp)
        origin = typing.get_origin(base)
        kw: dict[str, Any] = {"dest": name, "default": None}
        if origin in (list, tuple):
            (inner,) = typing.get_args(base)[:1] or (str,)
            kw.update(nargs="+", type=inner)
        elif base is bool:  # "--flag" alone means true; "--flag false" too
            kw.update(type=_parse_bool, nargs="?", const=True, metavar="true|false")
        else:
            kw.update(type=base)
        help_text = ((f.metadata.get("help", "") if f.metadata else "")
                     or comments.get(f.name) or COMMON_HELP.get(f.name, ""))
        if defaults is not None:
            help_text = f"{help_text} (default: {_shown(getattr(defaults, f.name))})".strip()
        help_text = help_text.replace("`", "").replace("%", "%%")
        kw.setdefault("metavar", _METAVAR.get(base, "TEXT"))
        flags = [f"--{name}"]
        if "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
        parser.add_argument(*flags, help=help_text, **kw)


_METAVAR = {int: "N", float: "X", str: "TEXT"}


def _shown(value) -> str:
    """A default as it would be typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    return str(value)


def build(cls, args: argparse.Namespace | dict, config_file: str | None = None,
          base: dict | None = None):
    """The config: class defaults, then the file (or ``base``, a nested dict), then the flags
    that were given."""
    data: dict = load_file(config_file) if config_file else json.loads(json.dumps(base or {}))
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    for key, value in given.items():
        if value is None or "." not in key and key not in {f.name for f in dataclasses.fields(cls)}:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(cls, data)

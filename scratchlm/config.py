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
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any


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


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take, written on its field's type:
    ``epochs: Count = 1`` or ``alpha: Annotated[float, Range(0, 1)] = 0.5``. ``from_dict``
    checks every config built from flags or files, and a config's ``__post_init__`` may call
    ``check_bounds(self)`` so one built in Python meets the same rule; ``None`` values
    (optional settings) pass."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False
    note: str = ""  # said after the rule ("0 turns clipping off")

    def refuses(self, value) -> bool:
        low, high = self.low, self.high
        return (low is not None and (value <= low if self.low_open else value < low)) or (
            high is not None and (value >= high if self.high_open else value > high))

    def __str__(self) -> str:
        if self.high is None:
            want = f"{'>' if self.low_open else '>='} {self.low}"
        else:
            want = (f"in {'(' if self.low_open else '['}{self.low}, {self.high}"
                    f"{')' if self.high_open else ']'}")
        return f"{want} ({self.note})" if self.note else want


# The ranges settings share, by what they count or measure.
Count = Annotated[int, Range(1)]  # 1, 2, 3, ...: batches, epochs, tokens, layers
NonNegInt = Annotated[int, Range(0)]  # 0 means none (or off)
NonNegFloat = Annotated[float, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]  # rates, scales, seconds
Fraction = Annotated[float, Range(0, 1, high_open=True)]  # a share: [0, 1)
Probability = Annotated[float, Range(0, 1, low_open=True)]  # (0, 1]: top_p, mfu
Port = Annotated[int, Range(0, 65535)]


@functools.cache
def ranges(cls) -> dict[str, Range]:
    """{field: its Range} of a config class, read off the fields' annotated types."""
    out = {}
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        tp, _ = _unwrap_optional(tp)
        for mark in getattr(tp, "__metadata__", ()):
            if isinstance(mark, Range):
                out[name] = mark
    return out


def check_bounds(obj, prefix: str = "") -> None:
    """Refuse a numeric field outside its ``Range`` (or any NaN/infinite float), naming the key
    (``--prefix.name``) and the value."""
    rules = ranges(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = f"--{prefix}{f.name}"
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value}")
        rule = rules.get(f.name)
        if rule is not None and rule.refuses(value):
            raise ValueError(f"{key} must be {rule}, got {value}")


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
        help_text = comments.get(f.name, "")
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

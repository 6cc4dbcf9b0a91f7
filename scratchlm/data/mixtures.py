"""Mixture files: a ``.yaml`` that lists ``--data`` sources and their weights, read exactly as
the same ``data:weight`` items given on the command line (``data/documents.py``).

    sources:                          # paths relative to the YAML file's folder
      - data: hf://datasets/HuggingFaceFW/fineweb-edu/sample-10BT
        weight: 0.7
      - data: shards/*.jsonl.zst
        weight: 0.3

The file is checked before anything is read: one key, ``sources``; each entry ``data`` (a
string) and an optional positive ``weight``, nothing else; no mixture inside a mixture; at most
``MAX_MIXTURE_BYTES``. A mistake is a ``DataFileError`` naming the file and the entry.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from scratchlm.data.text_file import DataFileError, read_text

MIXTURE_SUFFIXES = (".yaml", ".yml")
MAX_MIXTURE_BYTES = 1 << 20


def expand_mixtures(specs: Sequence[str]) -> list[str]:
    """``specs`` with each mixture file (``.yaml``, the module doc) replaced by its sources
    as ``data:weight`` specs; anything wrong in one is a ``DataFileError`` naming the file and
    the entry."""
    out = []
    for spec in specs:
        path = Path(str(spec)).expanduser()
        if path.suffix.lower() not in MIXTURE_SUFFIXES or not path.is_file():
            out.append(str(spec))
            continue
        out += _mixture(path)
    return out


def _mixture(path: Path) -> list[str]:
    import yaml

    if path.stat().st_size > MAX_MIXTURE_BYTES:
        raise DataFileError(f"{path}: a mixture file is at most {MAX_MIXTURE_BYTES} bytes")
    try:
        doc = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise DataFileError(f"{path}: not valid YAML: {e}") from None
    entries = doc.get("sources") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries or set(doc) != {"sources"}:
        raise DataFileError(f"{path}: a mixture is a mapping with one key, 'sources', a list of "
                            "{data: ..., weight: ...} entries")
    specs = []
    for i, entry in enumerate(entries, 1):
        where = f"{path}: source {i}"
        if not isinstance(entry, dict) or "data" not in entry or set(entry) - {"data", "weight"}:
            raise DataFileError(f"{where}: an entry is {{data: PATH, weight: NUMBER}} (weight "
                                f"optional), got {entry!r}")
        data, weight = entry["data"], entry.get("weight")
        if not isinstance(data, str) or not data:
            raise DataFileError(f"{where}: data must be a path, a glob or a data set name")
        if Path(data).suffix.lower() in MIXTURE_SUFFIXES:
            raise DataFileError(f"{where}: a mixture cannot name another mixture ({data})")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not 0 < weight < float("inf")):
            raise DataFileError(f"{where}: weight must be a positive number, got {weight!r}")
        local = path.parent / Path(data).expanduser()
        if "://" not in data and not Path(data).expanduser().is_absolute() and (
                local.exists() or glob.has_magic(data) and glob.glob(str(local))):
            data = str(local)  # relative to the mixture file
        specs.append(data if weight is None else f"{data}:{float(weight)}")
    return specs

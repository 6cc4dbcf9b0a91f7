"""How a model asks to be sampled when a request says nothing: one answer for the server,
``chat``, ``generate`` and the Python API.

The model's own settings come first: a Hugging Face folder's ``generation_config.json``
(``do_sample`` with its ``temperature``, ``top_k``, ``top_p``; Hugging Face's defaults for the
fields it leaves out: 1.0, 50, 1.0; without ``do_sample`` it decodes greedily), or a GGUF
file's ``general.sampling.temp`` / ``top_k`` / ``top_p``. A finetuning run's ``final/`` that
stores only what it trained asks its base. Otherwise the documented default is greedy
decoding (temperature 0): the answer a user can reproduce, and the one the book's chapter 5
starts from. A request's own temperature, top_k and top_p always win (``resolve``).

A generation_config.json field of the wrong type or range (``"do_sample": "no"``, a NaN or
string temperature) is a ValueError naming the file and the field, never read as another value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    source: str = "scratchlm's default (greedy)"

    def resolve(self, temperature: float | None = None, top_k: int | None = None,
                top_p: float | None = None) -> tuple[float, int | None, float | None]:
        """(temperature, top_k, top_p) with each given value over the default; top_k 0 and
        top_p 1.0 switch that filter off."""
        t = self.temperature if temperature is None else temperature
        k = self.top_k if top_k is None else top_k
        p = self.top_p if top_p is None else top_p
        return t, (k or None), (None if p is None or p >= 1.0 else p)


GREEDY = SamplingDefaults()


def _number(value, low: float, high: float, integer: bool = False):
    """A setting from a file, or None when it is missing or out of range (a hostile or odd
    file never sets a NaN temperature)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or not low <= value <= high:
        return None  # checked before int(): int(inf) raises
    if integer and value != int(value):
        return None
    return int(value) if integer else float(value)


# generation_config.json's sampling fields: (low, high, integer). null or left out: not set.
HF_FIELDS = {"temperature": (0.0, 100.0, False), "top_k": (0, 1 << 31, True),
             "top_p": (0.0, 1.0, False)}


def _hf_fields(cfg: dict, path: Path) -> tuple[bool, dict]:
    """``do_sample`` and the sampling fields of a generation_config.json, each checked: a
    ``"do_sample": "no"`` is a string, and any non-empty string is true, so it would sample."""
    sample = cfg.get("do_sample")
    if sample is not None and not isinstance(sample, bool):
        raise ValueError(f"{path}: 'do_sample' must be true or false, got {sample!r}")
    values = {}
    for field, (low, high, integer) in HF_FIELDS.items():
        value = cfg.get(field)
        if value is not None and _number(value, low, high, integer) is None:
            want = (f"an integer in [{low}, {high}]" if integer
                    else f"a number in [{low:g}, {high:g}]")
            raise ValueError(f"{path}: {field!r} must be {want}, got {value!r}")
        values[field] = value
    return bool(sample), values


def _settings(temperature, top_k, top_p, source: str) -> SamplingDefaults:
    """Sampling settings read from a file; a missing or odd temperature is 1.0, a top_k or
    top_p that filters nothing (0, 1.0) or makes no sense is off."""
    t = _number(temperature, 0.0, 100.0)
    k = _number(top_k, 0, 1 << 31, integer=True)
    p = _number(top_p, 0.0, 1.0)
    return SamplingDefaults(1.0 if t is None else t, k or None,
                            None if p is None or p >= 1.0 or p == 0 else p, source)


def from_hf(path: Path) -> SamplingDefaults:
    """A generation_config.json's defaults; a file that is not JSON, or a field of the wrong
    type or range, is a ValueError naming the file and the field (never read as something
    else)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a generation config ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a generation config (a JSON object expected)")
    sample, values = _hf_fields(cfg, path)
    if not sample:
        return replace(GREEDY, source=f"{path} (greedy: no do_sample)")
    defaults = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}  # Hugging Face's own
    return _settings(*(defaults[f] if values[f] is None else values[f] for f in HF_FIELDS),
                     str(path))


def from_gguf(meta: dict, source: str) -> SamplingDefaults | None:
    keys = ("general.sampling.temp", "general.sampling.top_k", "general.sampling.top_p")
    if not any(k in meta for k in keys):
        return None
    return _settings(*(meta.get(k) for k in keys), source)


def sampling_defaults(name: str, _depth: int = 0) -> SamplingDefaults:
    """The sampling defaults of a preset, a GGUF file or a model folder (see the module
    docstring); greedy when the model says nothing."""
    from scratchlm.checkpoints.delta import base_reference
    from scratchlm.checkpoints.hub import fetch_hf_repo
    from scratchlm.checkpoints.names import resolve

    ref = resolve(name)
    found = None
    if ref.is_gguf:
        from scratchlm.models.convert.gguf import read_gguf

        path = ref.gguf_path()
        found = from_gguf(read_gguf(path)[0], str(path))
    else:
        folder = fetch_hf_repo(ref.repo, progress=False) if ref.kind == "hub" else Path(ref.name)
        if (folder / "generation_config.json").is_file():
            found = from_hf(folder / "generation_config.json")
        elif _depth < 8:  # a run stored over its base (checkpoints/delta.py) samples as the base
            try:
                meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
                base = meta["scratchlm"]["base"]["model"]
            except (OSError, ValueError, KeyError, TypeError):
                base = None
            if isinstance(base, str):  # a relative base is read from this folder, as loading does
                return sampling_defaults(base_reference(base, relative_to=folder), _depth + 1)
    return found or GREEDY

"""GGUF files (llama.cpp): read metadata and tensors, dequantize, map names onto our models.

Each llama.cpp architecture is one row of ``ARCHS`` (``gguf_archs.py``): an ``Arch`` (here)
with its tensor names and its metadata rules (``Arch.read``, ``write``, ``check``, ...), whose
small functions live in ``gguf_rules.py`` (the transformer families), ``gguf_qwen35.py`` and
``gguf_gemma4.py``. ``config_kwargs`` and ``config_metadata`` only look the row up; adding an
architecture is adding a row.

The quantized block layouts (Q8_0, Q4_0/Q4_1, the K-quants) and their dequantization are in
``nn/gguf_blocks.py``.

llama.cpp's converter also permutes the rows of the Q and K projections (pairs interleaved, for
its RoPE kernel); ``unpermute`` restores Hugging Face's "rotate half" order, which ours uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from scratchlm.nn.gguf_blocks import QK_K, dequantize  # noqa: F401 (re-exported)

SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K",
             "Q4_K", "Q5_K", "Q6_K", "MXFP4")


class GGUFError(ValueError):
    """A GGUF file or tensor we cannot use; the message names the file and tensor."""


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: (n_head * D, C) rows back to rotate-half order."""
    rows = w.shape[0]
    # llama.cpp: w.reshape(n_head, 2, half, C).swapaxes(1, 2); this is its inverse
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order from rotate-half order (the inverse of ``unpermute``)."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def read_gguf(path: str | Path):
    """(metadata dict, file) of a GGUF file: ``file.tensors`` lists each tensor's name, type,
    shape (inner dimension first) and bytes. The header is read with every count checked
    (``gguf_layout.read_layout``)."""
    from types import SimpleNamespace

    from scratchlm.models.convert.gguf_layout import read_layout

    meta, tensors = read_layout(path)
    return meta, SimpleNamespace(tensors=tensors)


def iter_tensors(path: str | Path, reader) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array in (out, in) layout) for every tensor, dequantized one at a time."""
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in SUPPORTED:
            raise GGUFError(f"{path}: tensor {t.name!r} has quantization type {qtype}, which "
                            f"is not supported (supported: {', '.join(SUPPORTED)})")
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists dims inner-first
        yield t.name, dequantize(t.data, qtype, shape)


def _int(meta: dict, key: str, source: str, default=None, low: int = 1,
         high: int = 1 << 24) -> int:
    """An integer metadata field, checked against sane bounds before anything is allocated."""
    value = meta.get(key, default)
    if value is None:
        raise GGUFError(f"{source}: metadata field {key!r} is missing")
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise GGUFError(f"{source}: metadata field {key!r} is not an integer ({value!r})") from None
    if not low <= value <= high:
        raise GGUFError(f"{source}: metadata field {key!r} = {value} is out of range "
                        f"[{low}, {high}]")
    return value


def _int_array(meta: dict, key: str, source: str, length: int | None = None, low: int = 1,
               high: int = 1 << 24) -> list[int]:
    """A per-layer (or fixed-length) integer array field, each value bounded, or a
    ``GGUFError`` naming the field: no bools, no other types, no other length."""
    value = meta.get(key)
    if (not isinstance(value, (list, tuple)) or (length is not None and len(value) != length)
            or any(type(v) is not int or not low <= v <= high for v in value)):
        want = f"{length} " if length is not None else ""
        raise GGUFError(f"{source}: metadata field {key!r} must be an array of {want}integers "
                        f"in [{low}, {high}], got {str(value)[:80]}")
    return list(value)


def _bool_array(meta: dict, key: str, source: str, length: int) -> list[bool]:
    """A per-layer bool array field (ints 0/1 accepted, as llama.cpp reads them)."""
    value = meta.get(key)
    if (not isinstance(value, (list, tuple)) or len(value) != length
            or any(v not in (0, 1) for v in value)):
        raise GGUFError(f"{source}: metadata field {key!r} must be an array of {length} bools, "
                        f"got {str(value)[:80]}")
    return [bool(v) for v in value]


def _float(meta: dict, key: str, default: float) -> float:
    """A float32 metadata field as the shortest decimal that round-trips (1e-06, not
    9.99999997e-07), so configs read from GGUF equal those read from config.json."""
    return float(str(np.float32(meta.get(key, default))))


def config_kwargs(meta: dict, source: str = "GGUF") -> dict:
    """Config fields (of the family the registry names for the file's architecture) from GGUF
    metadata, read by that architecture's row of ``ARCHS`` (``Arch.read``)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise GGUFError(f"{source}: unsupported architecture {arch!r} "
                        f"(supported: {', '.join(ARCHS)})")
    return ARCHS[arch].read(meta, arch + ".", source)


def config_metadata(cfg, arch: str) -> dict[str, int | float | str]:
    """The inverse of ``config_kwargs``: GGUF metadata (ints as uint32, floats as float32) for
    a config of the family that writes ``arch`` (``Arch.write``). ``GGUFError`` for settings
    the file format (as llama.cpp reads it) cannot carry."""
    if arch not in ARCHS:
        raise GGUFError(f"no GGUF architecture {arch!r} (supported: {', '.join(ARCHS)})")
    rules = ARCHS[arch]
    scaling = getattr(cfg, "rope_scaling", None)
    kind = (scaling or {}).get("type")
    if scaling and not (rules.rope_freqs and not kind or rules.yarn and kind == "yarn"):
        raise GGUFError(f"{arch} GGUF files carry no rope_scaling {scaling!r} (Llama 3's "
                        f"scaling of a llama model is written as its rope_freqs tensor, YaRN's "
                        f"of an olmo2 model as metadata)")
    if not rules.sliding_window and getattr(cfg, "sliding_window", 0):
        raise GGUFError(f"llama.cpp's {arch} architecture has no sliding-window attention")
    rules.check(cfg)
    return rules.write(cfg, arch + ".")


# experts' gate and up in one stacked tensor (E, 2F, C), as Gemma 4's files hold them
_GATE_UP_EXPS = "ffn_gate_up_exps.weight"
# stacked experts (E, out, in) -> our per-expert Linear (gpt-oss's have biases, (E, out))
_EXPERTS = {"ffn_gate_exps.weight": "fc1.weight", "ffn_up_exps.weight": "fc2.weight",
            "ffn_down_exps.weight": "fc3.weight", "ffn_gate_exps.bias": "fc1.bias",
            "ffn_up_exps.bias": "fc2.bias", "ffn_down_exps.bias": "fc3.bias"}
_TOP = {"token_embd.weight": "tok_emb.weight", "output_norm.weight": "final_norm.weight",
        "output.weight": "out_head.weight"}


ROPE_FREQS = "rope_freqs.weight"  # Llama 3.x: each RoPE frequency's divisor


def rope_freq_factors(head_dim: int, base: float, s: dict) -> np.ndarray:
    """The ``rope_freqs`` tensor llama.cpp's converter writes for Llama 3's ``rope_scaling``
    ``s`` (``{"factor", "low_freq_factor", "high_freq_factor", "original_context_length"}``):
    per frequency 1 (wavelengths under the original context / high_freq_factor), ``factor``
    (over it / low_freq_factor) or the blend between."""
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    old, low, high = s["original_context_length"], s["low_freq_factor"], s["high_freq_factor"]
    wavelen = 2 * np.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    blend = 1 / ((1 - smooth) / s["factor"] + smooth)
    out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, s["factor"], blend))
    return out.astype(np.float32)


def scaling_from_freq_factors(factors: np.ndarray, head_dim: int, base: float,
                              source: str) -> dict | None:
    """Llama 3's ``rope_scaling`` whose ``rope_freq_factors`` are ``factors`` (a file's
    ``rope_freqs``): the factor is the largest; the blended band fixes the line
    smooth(1/wavelength) = (old / wavelength - low) / (high - low), and with
    low_freq_factor = 1 (every Llama 3.x) old and high follow. None for factors of 1;
    ``GGUFError`` when no such scaling gives the factors."""
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    if f.shape[0] != head_dim // 2 or not np.isfinite(f).all() or (f <= 0).any():
        raise GGUFError(f"{source}: rope_freqs has {f.shape[0]} values (or values <= 0); "
                        f"the heads need {head_dim // 2}")
    if np.allclose(f, 1.0):
        return None
    factor = float(f.max())
    inverse = 1.0 / (2 * np.pi / (1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)))
    band = (f > 1 + 1e-6) & (f < factor * (1 - 1e-6))
    smooth = (1 / f[band] - 1 / factor) / (1 - 1 / factor)
    candidates = []
    if band.sum() >= 2:
        a, b = np.polyfit(inverse[band], smooth, 1)  # smooth = a / wavelength + b
        if b < 0:
            candidates.append((1 - 1 / b, -a / b))  # (high_freq_factor, original context)
    elif band.sum() == 1:  # one blended value: Llama 3's high_freq_factor of 4 fixes it
        candidates.append((4.0, (3 * smooth[0] + 1) / inverse[band][0]))
    else:  # no blended value: any context between the jumps does; a power of two
        candidates += [(4.0, 2.0 ** k) for k in range(4, 25)]
    for high, old in candidates:
        fitted = {"factor": factor, "low_freq_factor": 1.0,
                  "high_freq_factor": round(float(high), 6),
                  "original_context_length": int(round(float(old)))}
        if np.allclose(rope_freq_factors(head_dim, base, fitted), f, rtol=1e-4, atol=0):
            return fitted
    raise GGUFError(f"{source}: its rope_freqs are not Llama 3's RoPE scaling (only that one "
                    f"is read)")


def _allow(cfg) -> None:
    """An architecture that refuses no config beyond the checks every one makes."""


class Arch:
    """One llama.cpp architecture: how its tensors map onto ours (both ways) and how its
    metadata maps onto our config (both ways). ``a`` below is the metadata prefix, "llama."."""

    def __init__(self, block: dict, *, read: Callable[[dict, str, str], dict],
                 write: Callable[[object, str], dict], check: Callable[[object], None] = _allow,
                 sliding_window: bool = False, permute_qk: bool = False,
                 norm_shift: float = 0.0, top: dict | None = None,
                 zero_biases: tuple[str, ...] = (),
                 rope_freqs: tuple[Callable, Callable] | None = None,
                 yarn: bool = False, head_always: bool = False,
                 experts: bool | None = False,
                 unshifted: tuple[str, ...] = (),
                 fix: tuple[Callable, Callable] | None = None, fixed_columns: tuple = (),
                 experts_under: str = "ff", fused_gate_up: bool = False,
                 from_names: Callable[[set], dict] | None = None):
        self.block = block
        self.top = _TOP if top is None else top
        self.read = read  # read(meta, a, source): config fields; GGUFError naming source
        self.write = write  # write(cfg, a): metadata for a config (check passed)
        self.check = check  # check(cfg): GGUFError for a config llama.cpp would misread
        self.sliding_window = sliding_window  # llama.cpp's architecture has local layers
        self.permute_qk = permute_qk  # llama.cpp interleaved Q/K rows for its "normal" RoPE
        self.norm_shift = norm_shift  # Gemma: llama.cpp stores 1 + w in every norm weight
        self.zero_biases = zero_biases  # biases llama.cpp requires: written as zeros if absent
        # (read(factors, kwargs, source) -> config fields, write(cfg) -> factors or None):
        # what the rope_freqs tensor says (Llama 3's scaling; Gemma 4's proportional RoPE)
        self.rope_freqs = rope_freqs
        self.yarn = yarn  # YaRN's scaling as rope.scaling.* metadata
        self.head_always = head_always  # llama.cpp requires output.weight, even when tied
        self.experts = experts  # its feed-forwards are mixtures of experts (None: either)
        self.unshifted = unshifted  # norms that norm_shift leaves alone
        # (read, write): fix(name, array, cfg) -> array for block tensors whose values or
        # order llama.cpp's converter changes (Qwen3.5's value heads), by GGUF name
        self.fix = fix
        self.fixed_columns = fixed_columns  # tensors whose fix moves columns, not rows
        self.experts_under = experts_under  # our module holding the experts ("moe": Gemma 4's)
        self.fused_gate_up = fused_gate_up  # the experts' gate and up in one tensor (Gemma 4)
        # from_names(tensor names) -> config fields the metadata does not carry
        self.from_names = from_names

    def moves_columns(self, name: str) -> bool:
        """Whether reading ``name`` reorders its columns: its quantized blocks (whole rows
        of them) cannot be kept as they are (``keep_quantized``)."""
        return name.split(".", 2)[-1] in self.fixed_columns

    def convert(self, name: str, array: np.ndarray, cfg) -> Iterator[tuple[str | None, np.ndarray]]:
        """(our key, array) pairs for one GGUF tensor; KeyError for names we do not know."""
        if name == ROPE_FREQS:  # read into the config's rope_scaling (load_gguf)
            return
        if name in self.top:
            ours = self.top[name]
            yield ours, (array - self.norm_shift if ours == "final_norm.weight" else array)
            return
        if not name.startswith("blk."):
            raise KeyError(name)
        _, layer, rest = name.split(".", 2)
        pre = f"trf_blocks.{layer}."
        home = f"{pre}{self.experts_under}.experts"
        if rest == _GATE_UP_EXPS:  # gate and up stacked in one tensor: (E, 2F, C)
            if array.ndim != 3 or array.shape[1] % 2:
                raise GGUFError(f"{name} of shape {array.shape} is no stack of gate and up")
            for e in range(array.shape[0]):
                gate, up = np.split(array[e], 2)
                yield f"{home}.{e}.fc1.weight", gate
                yield f"{home}.{e}.fc2.weight", up
            return
        if rest in _EXPERTS:
            for e in range(array.shape[0]):
                yield f"{home}.{e}.{_EXPERTS[rest]}", array[e]
            return
        if rest not in self.block:
            raise KeyError(name)
        if self.permute_qk and rest == "attn_q.weight":
            array = unpermute(array, cfg.n_head)
        elif self.permute_qk and rest == "attn_k.weight":
            array = unpermute(array, cfg.n_kv_head)
        elif self.norm_shift and rest.endswith("norm.weight") and rest not in self.unshifted:
            array = array - self.norm_shift
        if self.fix is not None:
            array = self.fix[0](rest, array, cfg)
        yield pre + self.block[rest], array

    def to_gguf(self, state: dict[str, np.ndarray], cfg) -> Iterator[tuple[str, np.ndarray]]:
        """The inverse of ``convert``: (GGUF name, array) for our float32 state dict (tied
        heads left out, as llama.cpp reads a missing ``output.weight`` as tied)."""
        top = {ours: name for name, ours in self.top.items()}
        block = {ours: name for name, ours in self.block.items()}
        experts: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        for key, array in state.items():
            if key in top:
                yield top[key], (array + self.norm_shift if key == "final_norm.weight"
                                 else array)
                continue
            _, layer, rest = key.split(".", 2)
            if rest.startswith(f"{self.experts_under}.experts."):
                _, _, e, part = rest.split(".", 3)
                experts.setdefault((layer, part), {})[int(e)] = array
                continue
            if rest not in block:
                raise KeyError(key)
            name = block[rest]
            if self.permute_qk and name == "attn_q.weight":
                array = permute(array, cfg.n_head)
            elif self.permute_qk and name == "attn_k.weight":
                array = permute(array, cfg.n_kv_head)
            elif self.norm_shift and name.endswith("norm.weight") and name not in self.unshifted:
                array = array + self.norm_shift
            if self.fix is not None:
                array = self.fix[1](name, array, cfg)
            yield f"blk.{layer}.{name}", array
            bias = name.replace(".weight", ".bias")
            if bias in self.zero_biases and f"trf_blocks.{layer}.{self.block[bias]}" not in state:
                yield f"blk.{layer}.{bias}", np.zeros(array.shape[0], dtype=array.dtype)
        stacked = {ours: name for name, ours in _EXPERTS.items()}
        fused = self.fused_gate_up
        for (layer, part), arrays in experts.items():
            ordered = np.stack([arrays[e] for e in sorted(arrays)])
            if fused and part == "fc1.weight":
                up = experts[(layer, "fc2.weight")]
                ordered = np.concatenate([ordered, np.stack([up[e] for e in sorted(up)])], 1)
                yield f"blk.{layer}.{_GATE_UP_EXPS}", ordered
            elif not (fused and part == "fc2.weight"):
                yield f"blk.{layer}.{stacked[part]}", ordered
        factors = self.rope_freqs[1](cfg) if self.rope_freqs else None
        if factors is not None:
            yield ROPE_FREQS, factors


# the rows, which build on this module's Arch: imported last
from scratchlm.models.convert.gguf_archs import ARCHS  # noqa: E402

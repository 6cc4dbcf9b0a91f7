"""GGUF files (llama.cpp): read metadata and tensors, dequantize, map names onto our models.

Each llama.cpp architecture is one row of ``ARCHS`` (the end of this file): its tensor names
and its metadata rules (``Arch.read``, ``write``, ``check``, ``sliding_window``), with the small
functions of those rules just above the rows. ``config_kwargs`` and ``config_metadata`` only
look the row up; adding an architecture is adding a row.

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


_LLAMA_BLOCK = {
    "attn_norm.weight": "norm1.weight", "attn_q.weight": "att.q_proj.weight",
    "attn_k.weight": "att.k_proj.weight", "attn_v.weight": "att.v_proj.weight",
    "attn_q.bias": "att.q_proj.bias", "attn_k.bias": "att.k_proj.bias",
    "attn_v.bias": "att.v_proj.bias",
    "attn_output.weight": "att.out_proj.weight", "ffn_norm.weight": "norm2.weight",
    "ffn_gate.weight": "ff.fc1.weight", "ffn_up.weight": "ff.fc2.weight",
    "ffn_down.weight": "ff.fc3.weight",
}
_QK_NORM = {"attn_q_norm.weight": "att.q_norm.weight", "attn_k_norm.weight": "att.k_norm.weight"}
_MOE = {"ffn_gate_inp.weight": "ff.router.weight"}
_GEMMA3_BLOCK = {**_LLAMA_BLOCK, **_QK_NORM,
                 "post_attention_norm.weight": "post_att_norm.weight",
                 "post_ffw_norm.weight": "post_ff_norm.weight"}
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


def _llama3_freqs_read(factors: np.ndarray, kw: dict, source: str) -> dict:
    head_dim = kw.get("head_dim") or kw["n_embd"] // kw["n_head"]
    return {"rope_scaling": scaling_from_freq_factors(factors, head_dim, kw["rope_base"], source)}


def _llama3_freqs_write(cfg) -> np.ndarray | None:
    s = cfg.rope_scaling
    return rope_freq_factors(cfg.head_dim, cfg.rope_base, s) if s else None


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


# Each architecture's metadata rules, then its row. llama.cpp names every field
# "<architecture>.<field>"; ``a`` is that prefix.

def _widths(meta: dict, a: str, source: str) -> tuple[int, int, list]:
    """(embedding width, query heads, vocabulary tokens): read first, by every architecture."""
    n_embd = _int(meta, a + "embedding_length", source)
    n_head = _int(meta, a + "attention.head_count", source)
    return n_embd, n_head, meta.get("tokenizer.ggml.tokens") or []


def _llama_kwargs(meta: dict, a: str, source: str, rope_base: float = 10000.0,
                  norm_eps: float = 1e-5) -> dict:
    """LlamaConfig / Qwen3Config fields; ``head_dim`` only where the file gives one."""
    n_embd, n_head, tokens = _widths(meta, a, source)
    kw = dict(
        vocab_size=_int(meta, a + "vocab_size", source, default=len(tokens) or None),
        context_length=_int(meta, a + "context_length", source, high=1 << 24),
        n_embd=n_embd, n_layer=_int(meta, a + "block_count", source, high=4096), n_head=n_head,
        n_kv_head=_int(meta, a + "attention.head_count_kv", source, default=n_head),
        intermediate_size=_int(meta, a + "feed_forward_length", source),
        rope_base=_float(meta, a + "rope.freq_base", rope_base),
        norm_eps=_float(meta, a + "attention.layer_norm_rms_epsilon", norm_eps),
    )
    head_dim = meta.get(a + "attention.key_length", meta.get(a + "rope.dimension_count"))
    if head_dim is not None:
        kw["head_dim"] = _int(meta, a + "attention.key_length", source, default=head_dim,
                              high=1 << 16)
    elif n_embd % n_head:
        raise GGUFError(f"{source}: embedding_length {n_embd} is not a multiple of head_count "
                        f"{n_head} and no key_length is given")
    return kw


def _llama_metadata(cfg, a: str) -> dict[str, int | float | str]:
    return {
        a + "vocab_size": cfg.vocab_size, a + "context_length": cfg.context_length,
        a + "embedding_length": cfg.n_embd, a + "block_count": cfg.n_layer,
        a + "feed_forward_length": cfg.intermediate_size,
        a + "attention.head_count": cfg.n_head, a + "attention.head_count_kv": cfg.n_kv_head,
        a + "attention.key_length": cfg.head_dim, a + "attention.value_length": cfg.head_dim,
        a + "rope.dimension_count": cfg.head_dim, a + "rope.freq_base": float(cfg.rope_base),
        a + "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
    }


def _qwen3moe_kwargs(meta: dict, a: str, source: str) -> dict:
    """Qwen3's fields and its experts (gates always renormalised: norm_topk_prob)."""
    kw = _llama_kwargs(meta, a, source)
    kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                 "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                 "intermediate_size": _int(meta, a + "expert_feed_forward_length", source),
                 "norm_topk_prob": True}
    return kw


def _qwen3moe_metadata(cfg, a: str) -> dict[str, int | float | str]:
    meta = _llama_metadata(cfg, a)
    meta.update({a + "expert_count": cfg.moe.num_experts, a + "expert_used_count": cfg.moe.top_k,
                 a + "expert_feed_forward_length": cfg.moe.intermediate_size
                 or cfg.intermediate_size})
    return meta


def _gemma3_kwargs(meta: dict, a: str, source: str) -> dict:
    """Gemma3Config fields: llama.cpp fixes the 5:1 local/global pattern and scales queries by
    head_dim; the local RoPE base is Gemma's default."""
    kw = _llama_kwargs(meta, a, source, rope_base=1_000_000.0, norm_eps=1e-6)
    kw["sliding_window"] = _int(meta, a + "attention.sliding_window", source, default=512)
    kw["sliding_window_pattern"] = 6  # fixed for Gemma 3 in llama.cpp
    kw["query_pre_attn_scalar"] = int(kw.get("head_dim", kw["n_embd"] // kw["n_head"]))
    if meta.get(a + "rope.scaling.type") == "linear":
        kw["rope_linear_factor"] = _float(meta, a + "rope.scaling.factor", 1.0)
    return kw


def _gemma3_metadata(cfg, a: str) -> dict[str, int | float | str]:
    meta = _llama_metadata(cfg, a)
    meta[a + "attention.sliding_window"] = cfg.sliding_window
    if cfg.rope_linear_factor != 1.0:
        meta[a + "rope.scaling.type"] = "linear"
        meta[a + "rope.scaling.factor"] = float(cfg.rope_linear_factor)
    return meta


def _gemma3_check(cfg) -> None:
    if (cfg.rope_local_base != 10_000.0 or cfg.sliding_window_pattern != 6
            or cfg.query_pre_attn_scalar != cfg.head_dim):
        raise GGUFError("gemma3 GGUF fixes the local RoPE base (10000), the 5:1 layer pattern "
                        "and query_pre_attn_scalar = head_dim; this config differs")


def _gpt2_kwargs(meta: dict, a: str, source: str) -> dict:
    """GPTConfig fields: its feed-forward width is 4 C and its LayerNorm eps 1e-5, fixed."""
    n_embd, n_head, tokens = _widths(meta, a, source)
    if _int(meta, a + "feed_forward_length", source, default=4 * n_embd) != 4 * n_embd:
        raise GGUFError(f"{source}: a gpt2 feed_forward_length other than 4 x embedding_length "
                        "is not supported")
    eps = _float(meta, a + "attention.layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-9:
        raise GGUFError(f"{source}: gpt2 layer_norm_epsilon {eps} is not supported (1e-5)")
    if n_embd % n_head:
        raise GGUFError(f"{source}: embedding_length {n_embd} is not a multiple of head_count "
                        f"{n_head}")
    return dict(vocab_size=_int(meta, a + "vocab_size", source, default=len(tokens) or None),
                context_length=_int(meta, a + "context_length", source, high=1 << 24),
                n_embd=n_embd, n_layer=_int(meta, a + "block_count", source, high=4096),
                n_head=n_head)


def _gpt2_metadata(cfg, a: str) -> dict[str, int | float | str]:
    return {a + "vocab_size": cfg.vocab_size, a + "context_length": cfg.context_length,
            a + "embedding_length": cfg.n_embd, a + "block_count": cfg.n_layer,
            a + "feed_forward_length": 4 * cfg.n_embd, a + "attention.head_count": cfg.n_head,
            a + "attention.layer_norm_epsilon": 1e-5}


_OLMO2_BLOCK = {  # norms after attention and the feed-forward only; q/k norms over all heads
    "attn_q.weight": "att.q_proj.weight", "attn_k.weight": "att.k_proj.weight",
    "attn_v.weight": "att.v_proj.weight", "attn_output.weight": "att.out_proj.weight",
    **_QK_NORM, "post_attention_norm.weight": "att_out_norm.weight",
    "ffn_gate.weight": "ff.fc1.weight", "ffn_up.weight": "ff.fc2.weight",
    "ffn_down.weight": "ff.fc3.weight", "post_ffw_norm.weight": "ff_out_norm.weight",
}


def _yarn_mscale(factor: float) -> float:
    """The factor llama.cpp's YaRN puts on cos and sin: 0.1 ln(factor) + 1."""
    return 1.0 if factor <= 1 else 0.1 * float(np.log(factor)) + 1.0


def _window_pattern(meta: dict, a: str, source: str, n_layer: int, default: int) -> int:
    """Our every-k-th-layer-global ``sliding_window_pattern`` from ``attention.
    sliding_window_pattern``: a per-layer bool array (True: local), or n (every n-th global)."""
    pattern = meta.get(a + "attention.sliding_window_pattern", default)
    if not isinstance(pattern, (list, tuple)):
        return _int(meta, a + "attention.sliding_window_pattern", source, default=default,
                    high=4096)
    pattern = _bool_array(meta, a + "attention.sliding_window_pattern", source, n_layer)
    full = [i for i, local in enumerate(pattern) if not local]
    k = full[0] + 1 if full else 0
    if len(pattern) != n_layer or [bool(x) for x in pattern] != [
            not (k and (i + 1) % k == 0) for i in range(len(pattern))]:
        raise GGUFError(f"{source}: {a}attention.sliding_window_pattern is not "
                        "every-k-th-layer-global")
    return k


def _yarn_kwargs(meta: dict, a: str, source: str, context_length: int) -> dict | None:
    """YaRN from ``rope.scaling.*`` as llama.cpp applies it: its betas fixed at 32 and 1, the
    correction range rounded to whole dimensions (``truncate``), and cos/sin times
    0.1 ln(factor) + 1, times ``rope.scaling.attn_factor``."""
    kind = meta.get(a + "rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind != "yarn":
        raise GGUFError(f"{source}: rope scaling {kind!r} is not supported here (YaRN is)")
    factor = _float(meta, a + "rope.scaling.factor", 1.0)
    extra = _float(meta, a + "rope.scaling.attn_factor", 1.0)
    return {"type": "yarn", "factor": factor,
            "original_context_length": _int(meta, a + "rope.scaling.original_context_length",
                                            source, default=context_length),
            **({"attention_factor": _yarn_mscale(factor) * extra} if extra != 1.0 else {})}


def _yarn_metadata(s: dict | None, a: str) -> dict:
    if not s:
        return {}
    meta = {a + "rope.scaling.type": "yarn", a + "rope.scaling.factor": float(s["factor"]),
            a + "rope.scaling.original_context_length": s["original_context_length"]}
    if s.get("attention_factor") is not None:
        meta[a + "rope.scaling.attn_factor"] = float(s["attention_factor"]
                                                     / _yarn_mscale(s["factor"]))
    return meta


def _yarn_check(s: dict | None, arch: str) -> None:
    s = s or {}
    if s.get("beta_fast", 32) != 32 or s.get("beta_slow", 1) != 1:
        raise GGUFError(f"llama.cpp's {arch} fixes YaRN's beta_fast (32) and beta_slow (1); "
                        f"this config has {s}")


def _olmo2_kwargs(meta: dict, a: str, source: str) -> dict:
    """Olmo3Config fields (OLMo 2 is OLMo 3 without local layers or YaRN): the local layers
    from ``attention.sliding_window`` and its per-layer pattern, YaRN (``_yarn_kwargs``) on
    the global layers, as llama.cpp applies it."""
    kw = _llama_kwargs(meta, a, source, rope_base=500_000.0, norm_eps=1e-6)
    window = _int(meta, a + "attention.sliding_window", source, default=0, low=0)
    kw["sliding_window"] = window
    kw["sliding_window_pattern"] = (_window_pattern(meta, a, source, kw["n_layer"], 4)
                                    if window else 0)  # no local layers: OLMo 2
    kw["rope_scaling"] = _yarn_kwargs(meta, a, source, kw["context_length"])
    return kw


def _windows_metadata(cfg, a: str) -> dict:
    from scratchlm.nn.attention import layer_windows  # torch: not for requantizing a file

    if not cfg.sliding_window:
        return {}
    return {a + "attention.sliding_window": cfg.sliding_window,
            a + "attention.sliding_window_pattern": [
                bool(w) for w in layer_windows(cfg, type(cfg).__name__)]}


def _olmo2_metadata(cfg, a: str) -> dict:
    return {**_llama_metadata(cfg, a), **_windows_metadata(cfg, a),
            **_yarn_metadata(cfg.rope_scaling, a)}


def _olmo2_check(cfg) -> None:
    if cfg.n_head * cfg.head_dim != cfg.n_embd:
        raise GGUFError("llama.cpp's olmo2 needs n_head * head_dim = n_embd, got "
                        f"{cfg.n_head} x {cfg.head_dim} != {cfg.n_embd}")
    if cfg.qkv_bias or cfg.moe.num_experts:
        raise GGUFError("llama.cpp's olmo2 has no attention biases or experts")
    _yarn_check(cfg.rope_scaling, "olmo2")
    if not (cfg.rope_scaling or {}).get("truncate", True):
        raise GGUFError("llama.cpp's olmo2 rounds YaRN's correction range (truncate); this "
                        "config does not")


_GPT_OSS_BLOCK = {  # pre-norm; sinks; biases everywhere; experts in _EXPERTS
    "attn_norm.weight": "norm1.weight", "attn_q.weight": "att.q_proj.weight",
    "attn_k.weight": "att.k_proj.weight", "attn_v.weight": "att.v_proj.weight",
    "attn_q.bias": "att.q_proj.bias", "attn_k.bias": "att.k_proj.bias",
    "attn_v.bias": "att.v_proj.bias", "attn_output.weight": "att.out_proj.weight",
    "attn_output.bias": "att.out_proj.bias", "attn_sinks.weight": "att.sinks",
    "post_attention_norm.weight": "norm2.weight", "ffn_gate_inp.weight": "ff.router.weight",
    "ffn_gate_inp.bias": "ff.router.bias",
}


def _gpt_oss_kwargs(meta: dict, a: str, source: str) -> dict:
    """GptOssConfig fields: the experts' width is ``expert_feed_forward_length``; local and
    global layers alternate unless a per-layer pattern says otherwise; YaRN on every layer
    (``_yarn_kwargs``). llama.cpp fixes the clamped SwiGLU's alpha (1.702) and limit (7)."""
    kw = _llama_kwargs(meta, a, source, rope_base=150_000.0, norm_eps=1e-5)
    kw["intermediate_size"] = _int(meta, a + "expert_feed_forward_length", source)
    kw["sliding_window"] = _int(meta, a + "attention.sliding_window", source)
    kw["sliding_window_pattern"] = _window_pattern(meta, a, source, kw["n_layer"], 2)
    kw["rope_scaling"] = _yarn_kwargs(meta, a, source, kw["context_length"])
    kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                 "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                 "norm_topk_prob": True, "router_bias": True}
    return kw


def _gpt_oss_metadata(cfg, a: str) -> dict:
    meta = _llama_metadata(cfg, a)
    meta.update({a + "expert_count": cfg.moe.num_experts, a + "expert_used_count": cfg.moe.top_k,
                 a + "expert_feed_forward_length": cfg.moe.intermediate_size
                 or cfg.intermediate_size})
    return {**meta, **_windows_metadata(cfg, a), **_yarn_metadata(cfg.rope_scaling, a)}


def _gpt_oss_check(cfg) -> None:
    if cfg.swiglu_alpha != 1.702 or cfg.swiglu_limit != 7.0:
        raise GGUFError("llama.cpp's gpt-oss fixes the experts' swiglu_alpha (1.702) and "
                        f"swiglu_limit (7.0); this config has {cfg.swiglu_alpha}, "
                        f"{cfg.swiglu_limit}")
    moe = cfg.moe
    if not moe.norm_topk_prob or not moe.router_bias or moe.capacity_factor:
        raise GGUFError("llama.cpp's gpt-oss routes with a biased router, a softmax over the "
                        "top k and no expert capacity")
    if not cfg.sliding_window:
        raise GGUFError("llama.cpp's gpt-oss needs a sliding window")
    _yarn_check(cfg.rope_scaling, "gpt-oss")


_QWEN35_BLOCK = {  # attention layers as Qwen3's (q_proj's rows [q_h | gate_h] per head)
    "attn_norm.weight": "norm1.weight", "post_attention_norm.weight": "norm2.weight",
    "attn_q.weight": "att.q_proj.weight", "attn_k.weight": "att.k_proj.weight",
    "attn_v.weight": "att.v_proj.weight", "attn_output.weight": "att.out_proj.weight",
    **_QK_NORM,
    # Gated DeltaNet layers
    "attn_qkv.weight": "lin.qkv_proj.weight", "attn_gate.weight": "lin.z_proj.weight",
    "ssm_alpha.weight": "lin.a_proj.weight", "ssm_beta.weight": "lin.b_proj.weight",
    "ssm_conv1d.weight": "lin.conv.weight", "ssm_a": "lin.A_log", "ssm_dt.bias": "lin.dt_bias",
    "ssm_norm.weight": "lin.norm.weight", "ssm_out.weight": "lin.out_proj.weight",
    "ffn_gate.weight": "ff.fc1.weight", "ffn_up.weight": "ff.fc2.weight",
    "ffn_down.weight": "ff.fc3.weight",
    # Qwen3.5-MoE: routed experts (_EXPERTS) beside a gated shared one
    "ffn_gate_inp.weight": "ff.router.weight",
    "ffn_gate_inp_shexp.weight": "ff.shared_expert_gate.weight",
    "ffn_gate_shexp.weight": "ff.shared_expert.fc1.weight",
    "ffn_up_shexp.weight": "ff.shared_expert.fc2.weight",
    "ffn_down_shexp.weight": "ff.shared_expert.fc3.weight",
}


def _value_heads(array: np.ndarray, axis: int, cfg, width: int, to_gguf: bool) -> np.ndarray:
    """Qwen3.5's value heads between HF's order (grouped by key head: k0v0 k0v1 .. k1v0 ..)
    and llama.cpp's (tiled: k0v0 k1v0 .. k0v1 ..), ``width`` values each, along ``axis``."""
    nk, r = cfg.linear_key_heads, cfg.linear_value_heads // cfg.linear_key_heads
    if r == 1:
        return array
    a = np.moveaxis(array, axis, 0)
    groups = (nk, r) if to_gguf else (r, nk)
    a = a.reshape(*groups, width, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)
    return np.ascontiguousarray(np.moveaxis(a, 0, axis))


def _qwen35_fix(to_gguf: bool) -> Callable:
    def fix(name: str, array: np.ndarray, cfg) -> np.ndarray:
        dv, qk = cfg.linear_value_dim, 2 * cfg.linear_key_heads * cfg.linear_key_dim
        if name == "ssm_a":  # -exp(A_log) in the file (float32 both ways: not bit-exact)
            if to_gguf:
                return _value_heads(-np.exp(array.astype(np.float64)), 0, cfg, 1, True)
            return np.log(-_value_heads(array.astype(np.float64), 0, cfg, 1, False))
        if name == "ssm_dt.bias":
            return _value_heads(array, 0, cfg, 1, to_gguf)
        if name in ("attn_qkv.weight", "ssm_conv1d.weight"):  # [q | k | v]: v's heads move
            if name == "ssm_conv1d.weight" and not to_gguf:
                array = array[:, None, :]  # (C, K) -> our Conv1d's (C, 1, K)
            out = np.concatenate([array[:qk], _value_heads(array[qk:], 0, cfg, dv, to_gguf)])
            return out[:, 0, :] if name == "ssm_conv1d.weight" and to_gguf else out
        if name == "attn_gate.weight":
            return _value_heads(array, 0, cfg, dv, to_gguf)
        if name in ("ssm_alpha.weight", "ssm_beta.weight"):
            return _value_heads(array, 0, cfg, 1, to_gguf)
        if name == "ssm_out.weight":
            return _value_heads(array, 1, cfg, dv, to_gguf)
        return array
    return fix


def _rope_sections(half: int) -> list[int]:
    """Multimodal RoPE sections under which a text token (t = h = w positions) turns every
    pair of the ``half`` = rotary_dim / 2 pairs as plain RoPE does: llama.cpp's interleaved
    sections give pair i to t, h or w by i mod 3, while i < 3 x that section's size."""
    return [-(-half // 3), -(-(half - 1) // 3), -(-(half - 2) // 3), 0]


def _qwen35_kwargs(meta: dict, a: str, source: str) -> dict:
    """Qwen35Config fields: Gated DeltaNet sizes from ``ssm.*``, the linear layers from
    ``attention.recurrent_layers`` (or ``full_attention_interval``), the rotary share from
    ``rope.dimension_count``; multimodal RoPE sections that turn every pair of a text token."""
    moe = a == "qwen35moe."
    if moe and a + "feed_forward_length" not in meta:  # the MoE models have no dense width
        meta = {**meta, a + "feed_forward_length": meta.get(a + "expert_feed_forward_length")}
    kw = _llama_kwargs(meta, a, source, rope_base=10_000_000.0, norm_eps=1e-6)
    head_dim = kw.get("head_dim") or kw["n_embd"] // kw["n_head"]
    rotary = _int(meta, a + "rope.dimension_count", source, high=head_dim)
    sections = (_int_array(meta, a + "rope.dimension_sections", source, 4, low=0, high=1 << 16)
                if a + "rope.dimension_sections" in meta else _rope_sections(rotary // 2))
    if any(i >= 3 * sections[i % 3] for i in range(rotary // 2)):
        raise GGUFError(f"{source}: {a}rope.dimension_sections {list(sections)} leave some "
                        "pairs of a text token unturned (only text is supported)")
    value_heads = _int(meta, a + "ssm.time_step_rank", source, high=1 << 12)
    inner = _int(meta, a + "ssm.inner_size", source)
    if inner % value_heads:
        raise GGUFError(f"{source}: {a}ssm.inner_size {inner} is no multiple of the "
                        f"{value_heads} value heads")
    n_layer = kw["n_layer"]
    if a + "attention.recurrent_layers" in meta:
        recurrent = _bool_array(meta, a + "attention.recurrent_layers", source, n_layer)
        full = [i for i, lin in enumerate(recurrent) if not lin]
        interval = full[0] + 1 if full else n_layer + 1
        if len(recurrent) != n_layer or [bool(x) for x in recurrent] != [
                (i + 1) % interval != 0 for i in range(n_layer)]:
            raise GGUFError(f"{source}: {a}attention.recurrent_layers is not every-k-th-layer-"
                            "full-attention")
    else:
        interval = _int(meta, a + "full_attention_interval", source, default=4, high=4096)
    kw.update(partial_rotary_factor=rotary / head_dim, full_attention_interval=interval,
              linear_key_heads=_int(meta, a + "ssm.group_count", source, high=1 << 12),
              linear_value_heads=value_heads,
              linear_key_dim=_int(meta, a + "ssm.state_size", source, high=1 << 12),
              linear_value_dim=inner // value_heads,
              linear_conv_kernel=_int(meta, a + "ssm.conv_kernel", source, high=64))
    if moe:
        width = _int(meta, a + "expert_feed_forward_length", source)
        kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                     "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                     "intermediate_size": width, "norm_topk_prob": True,
                     "shared_expert_size": _int(meta, a + "expert_shared_feed_forward_length",
                                                source)}
    return kw


def _qwen35_metadata(cfg, a: str) -> dict:
    meta = _llama_metadata(cfg, a)
    meta.update({
        a + "rope.dimension_count": cfg.rotary_dim,
        a + "rope.dimension_sections": _rope_sections(cfg.rotary_dim // 2),
        a + "ssm.conv_kernel": cfg.linear_conv_kernel, a + "ssm.state_size": cfg.linear_key_dim,
        a + "ssm.group_count": cfg.linear_key_heads,
        a + "ssm.time_step_rank": cfg.linear_value_heads,
        a + "ssm.inner_size": cfg.linear_value_dim * cfg.linear_value_heads,
        a + "attention.recurrent_layers": list(cfg.linear_layers),
        a + "full_attention_interval": cfg.full_attention_interval})
    moe = cfg.moe
    if moe.num_experts:
        meta.update({a + "expert_count": moe.num_experts, a + "expert_used_count": moe.top_k,
                     a + "expert_feed_forward_length": moe.intermediate_size
                     or cfg.intermediate_size,
                     a + "expert_shared_feed_forward_length": moe.shared_expert_size})
    return meta


def _qwen35_check(cfg) -> None:
    if cfg.linear_key_dim != cfg.linear_value_dim:
        raise GGUFError("llama.cpp's qwen35 needs linear_key_dim = linear_value_dim, got "
                        f"{cfg.linear_key_dim} and {cfg.linear_value_dim}")
    moe = cfg.moe
    if moe.num_experts and (not moe.shared_expert_size or not moe.norm_topk_prob
                            or moe.router_bias or moe.capacity_factor):
        raise GGUFError("llama.cpp's qwen35moe has a shared expert, renormalised top-k "
                        "gates, no router bias and no expert capacity")


_GEMMA4_TOP = {**_TOP, "per_layer_token_embd.weight": "ple_emb.weight",
               "per_layer_model_proj.weight": "ple_proj.weight",
               "per_layer_proj_norm.weight": "ple_norm.weight"}
_GEMMA4_BLOCK = {
    "attn_norm.weight": "norm1.weight", "attn_q.weight": "att.q_proj.weight",
    "attn_k.weight": "att.k_proj.weight", "attn_v.weight": "att.v_proj.weight",
    "attn_output.weight": "att.out_proj.weight", **_QK_NORM,
    "post_attention_norm.weight": "post_att_norm.weight", "ffn_norm.weight": "norm2.weight",
    "ffn_gate.weight": "ff.fc1.weight", "ffn_up.weight": "ff.fc2.weight",
    "ffn_down.weight": "ff.fc3.weight", "post_ffw_norm.weight": "post_ff_norm.weight",
    "pre_ffw_norm_2.weight": "moe_norm.weight", "post_ffw_norm_1.weight": "post_ff_norm_1.weight",
    "post_ffw_norm_2.weight": "post_ff_norm_2.weight",
    "ffn_gate_inp.weight": "moe.router.weight", "ffn_gate_inp.scale": "moe.router_scale",
    "ffn_down_exps.scale": "moe.expert_scale",
    "inp_gate.weight": "ple_gate.weight", "proj.weight": "ple_out.weight",
    "post_norm.weight": "ple_norm.weight", "layer_output_scale.weight": "layer_scalar",
}


def _gemma4_kwargs(meta: dict, a: str, source: str) -> dict:
    """Gemma4Config fields: global layers' head size from ``key_length``, local ones' from
    ``key_length_swa``, key/value heads per layer (an array where they differ), the FFN
    width per layer (an array: twice as wide in the KV-shared layers), the local layers as a
    per-layer bool array, the soft cap, the per-layer embedding width."""
    n_embd, n_head, tokens = _widths(meta, a, source)
    n_layer = _int(meta, a + "block_count", source, high=4096)
    local = _bool_array(meta, a + "attention.sliding_window_pattern", source, n_layer)
    full = [i for i, w in enumerate(local) if not w]
    pattern = full[0] + 1 if full and full[0] < n_layer - 1 else 0
    windows = [not ((pattern and (i + 1) % pattern == 0) or i == n_layer - 1)
               for i in range(n_layer)]
    if [bool(w) for w in local] != windows:  # every k-th layer global, and the last
        raise GGUFError(f"{source}: {a}attention.sliding_window_pattern is not "
                        "every-k-th-layer-global")
    local_dim = _int(meta, a + "attention.key_length_swa", source, high=1 << 16)
    global_dim = _int(meta, a + "attention.key_length", source, high=1 << 16)
    for key, dim in (("rope.dimension_count", global_dim), ("rope.dimension_count_swa", local_dim)):
        if _int(meta, a + key, source, default=dim, high=1 << 16) != dim:  # rope_freqs says it
            raise GGUFError(f"{source}: {a}{key} other than the head size is not supported "
                            "(Gemma 4 turns its global heads' first pairs through rope_freqs)")
    shared = _int(meta, a + "attention.shared_kv_layers", source, default=0, low=0, high=4096)

    def per_layer(key: str) -> list[int]:  # one value for all layers, or one per layer
        if isinstance(meta.get(a + key), (list, tuple)):
            return _int_array(meta, a + key, source, n_layer)
        return [_int(meta, a + key, source)] * n_layer

    kv = per_layer("attention.head_count_kv")
    local_kv = {v for v, w in zip(kv, windows) if w} or {kv[0]}
    global_kv = {v for v, w in zip(kv, windows) if not w}
    if len(local_kv) != 1 or len(global_kv) != 1:
        raise GGUFError(f"{source}: {a}attention.head_count_kv differs within local or global "
                        "layers")
    ffn = per_layer("feed_forward_length")
    width = ffn[0]
    double = any(f != width for f in ffn)
    if double and ffn != [width * (2 if i >= n_layer - shared else 1) for i in range(n_layer)]:
        raise GGUFError(f"{source}: {a}feed_forward_length is neither one width nor twice it "
                        "in the KV-shared layers")
    ple = _int(meta, a + "embedding_length_per_layer_input", source, default=0, low=0)
    vocab = _int(meta, a + "vocab_size", source, default=len(tokens) or None)
    kw = dict(vocab_size=vocab,
              context_length=_int(meta, a + "context_length", source, high=1 << 24),
              n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_kv_head=local_kv.pop(),
              head_dim=local_dim, global_head_dim=global_dim, n_global_kv_head=global_kv.pop(),
              intermediate_size=width, double_wide_mlp=double, kv_shared_layers=shared,
              rope_base=_float(meta, a + "rope.freq_base", 1_000_000.0),
              rope_local_base=_float(meta, a + "rope.freq_base_swa", 10_000.0),
              norm_eps=_float(meta, a + "attention.layer_norm_rms_epsilon", 1e-6),
              sliding_window=_int(meta, a + "attention.sliding_window", source),
              sliding_window_pattern=pattern,
              final_logit_softcap=_float(meta, a + "final_logit_softcapping", 30.0),
              ple_dim=ple, ple_vocab_size=vocab)
    if a + "expert_count" in meta:
        kw["moe"] = {"num_experts": _int(meta, a + "expert_count", source, high=1 << 16),
                     "top_k": _int(meta, a + "expert_used_count", source, high=1 << 16),
                     "intermediate_size": _int(meta, a + "expert_feed_forward_length", source),
                     "norm_topk_prob": True}
    return kw


def _gemma4_metadata(cfg, a: str) -> dict:
    windows = cfg.windows
    first_shared = cfg.n_layer - cfg.kv_shared_layers
    meta = {
        a + "vocab_size": cfg.vocab_size, a + "context_length": cfg.context_length,
        a + "embedding_length": cfg.n_embd, a + "block_count": cfg.n_layer,
        a + "attention.head_count": cfg.n_head,
        a + "attention.head_count_kv": [cfg.n_kv_head if w else cfg.global_kv_heads
                                        for w in windows],
        a + "feed_forward_length": [cfg.intermediate_size * (
            2 if cfg.double_wide_mlp and i >= first_shared else 1) for i in range(cfg.n_layer)],
        a + "attention.key_length": cfg.global_head_dim,
        a + "attention.value_length": cfg.global_head_dim,
        a + "attention.key_length_swa": cfg.head_dim, a + "attention.value_length_swa": cfg.head_dim,
        a + "rope.dimension_count": cfg.global_head_dim, a + "rope.dimension_count_swa": cfg.head_dim,
        a + "rope.freq_base": float(cfg.rope_base), a + "rope.freq_base_swa": float(cfg.rope_local_base),
        a + "attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        a + "attention.sliding_window": cfg.sliding_window,
        a + "attention.sliding_window_pattern": [bool(w) for w in windows],
        a + "attention.shared_kv_layers": cfg.kv_shared_layers,
        a + "embedding_length_per_layer_input": cfg.ple_dim,
        # llama.cpp's default is 30: a model without a cap says 0
        a + "final_logit_softcapping": float(cfg.final_logit_softcap)}
    if cfg.moe.num_experts:
        meta.update({a + "expert_count": cfg.moe.num_experts, a + "expert_used_count": cfg.moe.top_k,
                     a + "expert_feed_forward_length": cfg.moe.intermediate_size
                     or cfg.intermediate_size})
    return meta


def _gemma4_check(cfg) -> None:
    first = cfg.n_layer - cfg.kv_shared_layers
    windows = cfg.windows
    if cfg.kv_shared_layers and (first < 2 or windows[first - 1] or not windows[first - 2]):
        raise GGUFError("llama.cpp's gemma4 reads a shared local layer's keys from layer "
                        "n_layer - kv_shared_layers - 2 and a global one's from the layer after "
                        "it: those must be a local and a global layer")
    if cfg.ple_dim and cfg.ple_vocab_size != cfg.vocab_size:
        raise GGUFError("llama.cpp's gemma4 needs the per-layer embedding table as tall as the "
                        f"vocabulary ({cfg.ple_vocab_size} != {cfg.vocab_size})")
    if not cfg.sliding_window:
        raise GGUFError("llama.cpp's gemma4 needs a sliding window")


def _gemma4_freqs_read(factors: np.ndarray, kw: dict, source: str) -> dict:
    """Proportional RoPE as llama.cpp's converter writes it: factor 1 for the pairs that
    turn, 1e30 (they never do) for the rest of a global head."""
    f = np.asarray(factors, dtype=np.float64).reshape(-1)
    turned = int((f == 1.0).sum())
    if f.shape[0] != kw["global_head_dim"] // 2 or not (f[:turned] == 1.0).all() or not (
            f[turned:] >= 1e20).all():
        raise GGUFError(f"{source}: rope_freqs is not proportional RoPE (ones, then 1e30)")
    return {"global_rotary_factor": turned / f.shape[0]}


def _gemma4_freqs_write(cfg) -> np.ndarray:
    from scratchlm.nn.rope import proportional_pairs  # torch: not for requantizing a file

    half = cfg.global_head_dim // 2
    turned = proportional_pairs(cfg.global_rotary_factor, cfg.global_head_dim)
    return np.array([1.0] * turned + [1e30] * (half - turned), dtype=np.float32)


def _gemma4_from_names(names: set) -> dict:
    """Keys as values (no ``attn_v`` in a global layer that computes keys) is in no metadata
    field: the tensors say it."""
    has_k = {n.split(".")[1] for n in names if n.endswith(".attn_k.weight")}
    has_v = {n.split(".")[1] for n in names if n.endswith(".attn_v.weight")}
    return {"k_eq_v": bool(has_k - has_v)}


_GPT2_BLOCK = {
    "attn_norm.weight": "norm1.scale", "attn_norm.bias": "norm1.shift",
    "attn_qkv.weight": "att.qkv.weight", "attn_qkv.bias": "att.qkv.bias",
    "attn_output.weight": "att.out_proj.weight", "attn_output.bias": "att.out_proj.bias",
    "ffn_norm.weight": "norm2.scale", "ffn_norm.bias": "norm2.shift",
    "ffn_up.weight": "ff.layers.0.weight", "ffn_up.bias": "ff.layers.0.bias",
    "ffn_down.weight": "ff.layers.2.weight", "ffn_down.bias": "ff.layers.2.bias",
}
_GPT2_TOP = {"token_embd.weight": "tok_emb.weight", "position_embd.weight": "pos_emb.weight",
             "output_norm.weight": "final_norm.scale", "output_norm.bias": "final_norm.shift",
             "output.weight": "out_head.weight"}

ARCHS = {
    "gpt2": Arch(_GPT2_BLOCK, read=_gpt2_kwargs, write=_gpt2_metadata, top=_GPT2_TOP,
                 zero_biases=("attn_qkv.bias",)),
    "llama": Arch(_LLAMA_BLOCK, read=_llama_kwargs, write=_llama_metadata, permute_qk=True,
                  rope_freqs=(_llama3_freqs_read, _llama3_freqs_write)),
    "qwen3": Arch({**_LLAMA_BLOCK, **_QK_NORM}, read=_llama_kwargs, write=_llama_metadata),
    "qwen3moe": Arch({**_LLAMA_BLOCK, **_QK_NORM, **_MOE}, read=_qwen3moe_kwargs,
                     write=_qwen3moe_metadata, experts=True),
    "gemma3": Arch(_GEMMA3_BLOCK, read=_gemma3_kwargs, write=_gemma3_metadata,
                   check=_gemma3_check, sliding_window=True, norm_shift=1.0),
    "olmo2": Arch(_OLMO2_BLOCK, read=_olmo2_kwargs, write=_olmo2_metadata, check=_olmo2_check,
                  sliding_window=True, yarn=True, head_always=True),
    "qwen35": Arch(_QWEN35_BLOCK, read=_qwen35_kwargs, write=_qwen35_metadata,
                   check=_qwen35_check, norm_shift=1.0, unshifted=("ssm_norm.weight",),
                   fix=(_qwen35_fix(False), _qwen35_fix(True)),
                   fixed_columns=("ssm_out.weight",)),
    "qwen35moe": Arch(_QWEN35_BLOCK, read=_qwen35_kwargs, write=_qwen35_metadata,
                      check=_qwen35_check, norm_shift=1.0, unshifted=("ssm_norm.weight",),
                      fix=(_qwen35_fix(False), _qwen35_fix(True)),
                      fixed_columns=("ssm_out.weight",), experts=True),
    "gemma4": Arch(_GEMMA4_BLOCK, read=_gemma4_kwargs, write=_gemma4_metadata,
                   check=_gemma4_check, sliding_window=True, top=_GEMMA4_TOP,
                   rope_freqs=(_gemma4_freqs_read, _gemma4_freqs_write),
                   from_names=_gemma4_from_names, experts=None, experts_under="moe",
                   fused_gate_up=True),
    "gpt-oss": Arch(_GPT_OSS_BLOCK, read=_gpt_oss_kwargs, write=_gpt_oss_metadata,
                    check=_gpt_oss_check, sliding_window=True, yarn=True, head_always=True,
                    experts=True),
}

"""llama.cpp block quantizers for the GGUF writer.

    Q8_0 block: fp16 scale d = max|x| / 127, then 32 int8 q = round(x / d)      (34 bytes)
    Q4_0 block: fp16 scale d = x[argmax |x|] / -8, then 32 4-bit q = x / d + 8  (18 bytes;
                the first 16 weights in the low nibbles, the last 16 in the high)
    Q4_K, Q5_K, Q6_K: super-blocks of 256 weights with a scale (and minimum) per 32 or 16
                (``nn/csrc/quantize.c``: the search for each sub-block's scale is a few
                thousand float operations per block, which numpy would run one by one)
    Q5_0, Q5_1: 32 weights, 5 bits (the K-quants' fallbacks; ``nn/csrc/quantize.c`` too)

Q8_0 and Q4_0 run in ``nn/csrc/quantize.c`` as well (5x numpy's speed), and in numpy (the
functions below) where no C compiler is found: the same bytes either way (tested).

Byte-for-byte the reference quantizers of ggml-quants.c: Q8_0 and Q4_0 checked against the
``gguf`` package's ``quants.quantize``, the others against llama.cpp's own
``ggml_quantize_chunk`` in the tests. Rows are quantized along their last axis, so a (rows,
cols) matrix needs cols divisible by the block's length (32, or 256 for K-quants).
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q5_0": 22, "Q5_1": 24, "Q4_K": 144, "Q5_K": 176,
               "Q6_K": 210}
BLOCK_LEN = {q: 256 if q.endswith("_K") else BLOCK for q in BLOCK_BYTES}
QUANTS = tuple(BLOCK_BYTES)
# csrc/quantize.c's format codes, in order
NATIVE = ("Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1", "Q8_0", "Q4_0")


def _round_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero (numpy's round goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def quantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    q = _round_away(blocks * _inverse(d)).astype(np.int8)
    return np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)


def quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
    d = (peak / np.float32(-8)).astype(np.float32)
    q = np.trunc(blocks * _inverse(d) + np.float32(8.5)).astype(np.uint8).clip(0, 15)
    packed = q[:, :BLOCK // 2] | (q[:, BLOCK // 2:] << np.uint8(4))
    return np.concatenate([d.astype(np.float16).view(np.uint8), packed], axis=1)


def _native(qtype: str, fallback=None):
    def run(blocks: np.ndarray) -> np.ndarray:
        from scratchlm.nn.native import quantize_function

        kernel = quantize_function("quantize_blocks")
        if kernel is None:
            if fallback is not None:  # Q8_0, Q4_0: numpy gives the same bytes, slower
                return fallback(blocks)
            raise RuntimeError(f"{qtype} export needs a C compiler (set CC) to build "
                               "nn/csrc/quantize.c; Q8_0 and Q4_0 do not")
        blocks = np.ascontiguousarray(blocks, dtype=np.float32)
        out = np.empty((blocks.shape[0], BLOCK_BYTES[qtype]), dtype=np.uint8)
        kernel(blocks.ctypes.data, out.ctypes.data, blocks.size, NATIVE.index(qtype))
        return out
    return run


_CHUNK = 1 << 21  # weights quantized at a time: bounded temporaries for large matrices
_QUANTIZERS = {**{q: _native(q) for q in NATIVE},
               "Q8_0": _native("Q8_0", quantize_q8_0), "Q4_0": _native("Q4_0", quantize_q4_0)}


def float32_rows(raw: np.ndarray, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A GGUF tensor's stored bytes as float32 of ``shape``: F16 converted in C where the
    library builds (numpy's float16 cast was a fifth of a requantization's time), any other
    type by ``nn/gguf_blocks.dequantize``."""
    from scratchlm.nn.gguf_blocks import dequantize
    from scratchlm.nn.native import quantize_function

    kernel = quantize_function("halves_to_floats") if qtype == "F16" else None
    if kernel is None:
        return np.ascontiguousarray(dequantize(raw, qtype, shape), dtype=np.float32)
    halves = np.ascontiguousarray(raw).view(np.uint16)
    out = np.empty(shape, dtype=np.float32)
    kernel(halves.ctypes.data, out.ctypes.data, out.size)
    return out


def can_quantize(shape: tuple[int, ...], qtype: str = "Q8_0") -> bool:
    """Whether a tensor of ``shape`` splits into whole ``qtype`` blocks along its rows."""
    return len(shape) >= 2 and shape[-1] % BLOCK_LEN[qtype] == 0


def quantize(array: np.ndarray, qtype: str) -> np.ndarray:
    """``array`` (..., cols) float32 -> uint8 (..., cols // block length * block bytes) in
    ``qtype``."""
    if qtype not in _QUANTIZERS:
        raise ValueError(f"quantization must be one of {QUANTS}, got {qtype!r}")
    if not can_quantize(array.shape, qtype):
        raise ValueError(f"{qtype}: a row of {array.shape[-1]} weights is not a whole number "
                         f"of {BLOCK_LEN[qtype]}-weight blocks")
    a = np.ascontiguousarray(array, dtype=np.float32)
    length, size = BLOCK_LEN[qtype], BLOCK_BYTES[qtype]
    blocks = a.reshape(-1, length)
    out = np.empty((blocks.shape[0], size), dtype=np.uint8)
    step = _CHUNK // length
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = _QUANTIZERS[qtype](blocks[i:i + step]).reshape(-1, size)
    return out.reshape(*a.shape[:-1], a.shape[-1] // length * size)

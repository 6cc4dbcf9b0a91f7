"""llama.cpp block quantizers for the GGUF writer: Q8_0 and Q4_0, 32 weights per block.

    Q8_0 block: fp16 scale d = max|x| / 127, then 32 int8 q = round(x / d)      (34 bytes)
    Q4_0 block: fp16 scale d = x[argmax |x|] / -8, then 32 4-bit q = x / d + 8  (18 bytes;
                the first 16 weights in the low nibbles, the last 16 in the high)

Byte-for-byte the reference quantizers of ggml-quants.c (checked against the ``gguf``
package's ``quants.quantize`` in the tests). Rows are quantized along their last axis, so a
(rows, cols) matrix needs cols divisible by 32.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18}
QUANTS = tuple(BLOCK_BYTES)


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


_CHUNK = 1 << 16  # blocks quantized at a time (2M weights)
_QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0}


def can_quantize(shape: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` splits into whole blocks along its rows."""
    return len(shape) >= 2 and shape[-1] % BLOCK == 0


def quantize(array: np.ndarray, qtype: str) -> np.ndarray:
    """``array`` (..., cols) float32 -> uint8 (..., cols // 32 * block bytes) in ``qtype``."""
    if qtype not in _QUANTIZERS:
        raise ValueError(f"quantization must be one of {QUANTS}, got {qtype!r}")
    if not can_quantize(array.shape):
        raise ValueError(f"{qtype}: a row of {array.shape[-1]} weights is not a whole number "
                         f"of {BLOCK}-weight blocks")
    a = np.ascontiguousarray(array, dtype=np.float32)
    blocks = a.reshape(-1, BLOCK)
    out = np.empty((blocks.shape[0], BLOCK_BYTES[qtype]), dtype=np.uint8)
    for i in range(0, blocks.shape[0], _CHUNK):  # bounded temporaries for large matrices
        out[i:i + _CHUNK] = _QUANTIZERS[qtype](blocks[i:i + _CHUNK])
    return out.reshape(*a.shape[:-1], a.shape[-1] // BLOCK * BLOCK_BYTES[qtype])

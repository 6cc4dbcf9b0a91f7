"""llama.cpp's quantized blocks as bytes in, float32 weights out: pure numpy, shared by the GGUF
loader (``models/convert/gguf.py``) and the layers that keep a file's blocks
(``nn/gguf_linear.py``).

Quantized blocks of 32 weights, as llama.cpp writes them (ggml-quants.c):

    Q8_0: fp16 d, 32 x int8 q                    w = d * q
    Q4_0: fp16 d, 16 bytes of 4-bit q            w = d * (q - 8)
    Q4_1: fp16 d, fp16 m, 16 bytes of 4-bit q    w = d * q + m
    Q5_0: fp16 d, 4 bytes of fifth bits, 16 bytes of low 4 bits          w = d * (q - 16)
    Q5_1: fp16 d, fp16 m, 4 bytes of fifth bits, 16 bytes of low 4 bits  w = d * q + m

In a 4-bit block the low nibbles of the 16 bytes are weights 0-15, the high nibbles 16-31; a
5-bit block adds bit j of its little-endian 32-bit word as weight j's fifth bit.

    MXFP4 (17 B, gpt-oss's experts): e8m0 e, 16 bytes of 4-bit E2M1 codes   w = 2^(e-128) * K[q]
      with K = 2 x the FP4 values (0, 1, 2, 3, 4, 6, 8, 12, and their negatives)

K-quants pack 256 weights per super-block in 16 (Q2_K, Q3_K, Q6_K: scale per 16 weights) or
8 (Q4_K, Q5_K: scale and min per 32 weights) sub-blocks, with fp16 super-scales:

    Q2_K (84 B):  16 x (4-bit scale | 4-bit min), 64 B of 2-bit q, d, dmin   w = d*sc*q - dmin*m
    Q3_K (110 B): 32 B high-bit mask, 64 B of 2-bit q, 12 B of 6-bit scales, d
                                                     w = d*(sc-32)*(q - 4 * (high bit unset))
    Q4_K (144 B): d, dmin, 12 B of 6-bit scales and mins, 128 B of 4-bit q   w = d*sc*q - dmin*m
    Q5_K (176 B): as Q4_K plus 32 B of fifth bits (bit s of byte l: weight l of sub-block s)
    Q6_K (210 B): 128 B low 4 bits, 64 B high 2 bits, 16 int8 scales, d     w = d*sc*(q - 32)
"""

from __future__ import annotations

import numpy as np

QK_K = 256  # weights per K-quant super-block


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.uint8).reshape(-1, block_bytes)


def dequantize(raw: np.ndarray, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 array of ``shape`` (rows, cols) from a tensor's stored bytes."""
    if qtype == "F32":
        out = raw.view(np.float32)
    elif qtype == "F16":
        out = raw.view(np.float16).astype(np.float32)
    elif qtype == "BF16":
        out = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif qtype == "Q8_0":
        b = _blocks(raw, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)  # (n, 1)
        q = b[:, 2:].view(np.int8).astype(np.float32)  # (n, 32)
        out = d * q
    elif qtype in ("Q4_0", "Q4_1"):
        head = 2 if qtype == "Q4_0" else 4
        b = _blocks(raw, head + 16)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        packed = b[:, head:]
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)  # (n, 32)
        if qtype == "Q4_0":
            out = d * (q - 8.0)
        else:
            m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
            out = d * q + m
    elif qtype in ("Q5_0", "Q5_1"):
        head = 2 if qtype == "Q5_0" else 4
        b = _blocks(raw, head + 20)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        high = b[:, head:head + 4].copy().view("<u4")  # (n, 1): bit j is weight j's fifth bit
        packed = b[:, head + 4:]
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.uint32)
        q |= ((high >> np.arange(32, dtype=np.uint32)) & 1) << 4
        if qtype == "Q5_0":
            out = d * (q.astype(np.float32) - 16.0)
        else:
            m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
            out = d * q.astype(np.float32) + m
    elif qtype == "MXFP4":
        b = _blocks(raw, 17)
        d = np.ldexp(np.float32(1.0), b[:, :1].astype(np.int32) - 128)  # (n, 1), e8m0 / 2
        packed = b[:, 1:]
        out = _MXFP4[np.concatenate([packed & 0x0F, packed >> 4], axis=1)] * d  # (n, 32)
    elif qtype in _K_QUANTS:
        block_bytes, fn = _K_QUANTS[qtype]
        out = fn(_blocks(raw, block_bytes))
    else:
        raise ValueError(f"unsupported type {qtype}")
    return out.reshape(shape)


# ggml's kvalues_mxfp4: twice each FP4 (E2M1) value, for the code's 4 bits
_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) bytes -> (n, 1) float32."""
    return b.copy().view(np.float16).astype(np.float32)


def _per16(scale: np.ndarray) -> np.ndarray:
    """(n, 16) scales -> (n, 256): each repeated over its 16 weights."""
    return np.repeat(scale, 16, axis=1)


def _q2_k(b: np.ndarray) -> np.ndarray:
    scales, qs = b[:, :16], b[:, 16:80].reshape(-1, 2, 1, 32)  # two halves of 128 weights
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((qs >> shifts) & 3).reshape(-1, QK_K).astype(np.float32)  # (n, 256)
    return d * _per16(scales & 0xF) * q - dmin * _per16(scales >> 4)


def _q3_k(b: np.ndarray) -> np.ndarray:
    hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    lo, hi = packed[:, :8], packed[:, 8:12]
    hi4 = np.concatenate([hi, hi, hi, hi], axis=1) >> np.repeat(
        np.array([0, 2, 4, 6], dtype=np.uint8), 4)  # (n, 16): the high 2 bits of each scale
    low4 = np.concatenate([lo & 0xF, lo >> 4], axis=1)  # (n, 16)
    sc = ((low4 | ((hi4 & 3) << 4)).astype(np.int16) - 32).astype(np.float32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K).astype(np.float32)
    bits = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)  # bit 4h + j: half h, shift step j
    high = ((hmask.reshape(-1, 1, 32) >> bits) & 1).reshape(-1, QK_K).astype(np.float32)
    return d * _per16(sc) * (q - 4.0 * (1.0 - high))


def _scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) bytes -> 8 six-bit scales and 8 six-bit mins per block, as float32 (n, 8)."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([a & 63, (c & 0xF) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(b: np.ndarray, qh: np.ndarray | None = None) -> np.ndarray:
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qs = b[:, -128:].reshape(-1, 4, 1, 32)  # 4 chunks of 32 bytes: sub-blocks 2c and 2c+1
    q = ((qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0xF).reshape(-1, 8, 32)
    if qh is not None:  # Q5_K: bit s of qh[l] is the fifth bit of weight l in sub-block s
        q = q | (((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) << 4)
    q = q.astype(np.float32)
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(-1, QK_K)


def _q5_k(b: np.ndarray) -> np.ndarray:
    return _q4_k(b, qh=b[:, 16:48])


def _q6_k(b: np.ndarray) -> np.ndarray:
    ql, qh = b[:, :128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    sc, d = b[:, 192:208].view(np.int8).astype(np.float32), _f16(b[:, 208:210])
    low = np.concatenate([ql & 0xF, ql >> 4], axis=2)  # (n, 2, 128)
    high = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=2)  # (n, 2, 128)
    q = ((low | (high << 4)).astype(np.int16) - 32).reshape(-1, QK_K).astype(np.float32)
    return d * _per16(sc) * q


_K_QUANTS = {"Q2_K": (84, _q2_k), "Q3_K": (110, _q3_k), "Q4_K": (144, _q4_k),
             "Q5_K": (176, _q5_k), "Q6_K": (210, _q6_k)}

# bytes of one block, and the weights it holds, for each block format
BLOCKS = {"Q8_0": (34, 32), "Q4_0": (18, 32), "Q4_1": (20, 32), "Q5_0": (22, 32),
          "Q5_1": (24, 32),
          **{name: (size, QK_K) for name, (size, _) in _K_QUANTS.items()}}

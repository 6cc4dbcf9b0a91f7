"""Our Q8_0/Q4_0 quantizers are byte-for-byte the reference (the gguf package's port of
ggml-quants.c), and our reader dequantizes what they write."""

from __future__ import annotations

import numpy as np
import pytest

from scratchlm.export.quants import can_quantize, quantize
from scratchlm.models.convert.gguf import dequantize


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantize_matches_the_reference_bytes(qtype):
    import gguf
    from gguf import quants

    rng = np.random.default_rng(0)
    a = rng.standard_normal((96, 128)).astype(np.float32)
    a[0, :32] = 0.0  # an all-zero block (scale 0)
    a[1, :32] = 0.5  # equal values: ties in the rounding
    a[2, :32] = np.linspace(-1, 1, 32, dtype=np.float32)
    a[3] *= 1e4
    ours = quantize(a, qtype)
    ref = quants.quantize(a, getattr(gguf.GGMLQuantizationType, qtype))
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)
    back = dequantize(ours, qtype, a.shape)
    tol = {"Q8_0": 1 / 127, "Q4_0": 1 / 7}[qtype]
    peak = np.abs(a).reshape(-1, 32).max(axis=1).repeat(32).reshape(a.shape)
    assert np.all(np.abs(back - a) <= tol * peak + 1e-6)


def test_rows_that_are_not_whole_blocks_are_refused():
    assert can_quantize((8, 64)) and not can_quantize((8, 48)) and not can_quantize((64,))
    with pytest.raises(ValueError, match="not a whole number of 32-weight blocks"):
        quantize(np.zeros((4, 48), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantize(np.zeros((4, 64), np.float32), "Q2_K")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_the_c_and_numpy_quantizers_write_the_same_bytes(qtype):
    """Q8_0 / Q4_0 run in C where a compiler is found and in numpy where none is: the same
    blocks, ties and all-zero blocks included."""
    from scratchlm.export.quants import quantize_q4_0, quantize_q8_0
    from scratchlm.nn.native import load

    if load("quantize", "exact") is None:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((64, 256)) * rng.uniform(1e-3, 1e3, (64, 1))).astype(np.float32)
    a[0] = 0.0
    a[1] = np.float32(0.5) * np.arange(256, dtype=np.float32) % 7 - 3  # exact halves: ties
    numpy_blocks = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0}[qtype](a.reshape(-1, 32))
    assert np.array_equal(quantize(a, qtype).reshape(-1, numpy_blocks.shape[1]), numpy_blocks)

"""GGUF blocks multiplied as stored (``nn/gguf_linear.py``, ``csrc/decode.c``'s gguf_linear):
equal to the ``gguf`` package's reference dequantize-then-matmul within float32 rounding, in
this CPU's build, the AVX2 build (what a CPU without AVX-512 builds) and the portable C build."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from conftest import QTYPES, blocks_of, rounded_reference
from scratchlm.nn.fuse import concat_linears
from scratchlm.nn.gguf_blocks import BLOCKS
from scratchlm.nn.gguf_linear import GGUFLinear, dequantize_blocks, gguf_matmul
from scratchlm.nn.native import VARIANTS, decode_function

pytest.importorskip("gguf")  # blocks_of quantizes with it


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_equals_the_gguf_package(qtype):
    cols = BLOCKS[qtype][1] * 3
    w = np.random.default_rng(0).standard_normal((7, cols)).astype(np.float32)
    blocks, ref = blocks_of(w, qtype)
    torch.testing.assert_close(dequantize_blocks(blocks, qtype, (7, cols)), ref, atol=1e-6,
                               rtol=1e-6)  # C (fused multiply-adds) and numpy alike


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("qtype", QTYPES)
def test_kernel_equals_dequantize_then_matmul(qtype, variant):
    from scratchlm.nn.native import default_variant, variants

    if variant not in variants():
        pytest.skip(f"this CPU cannot run the {variant} build")
    kernel = decode_function("gguf_linear", variant)
    if kernel is None:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(1)
    unit = BLOCKS[qtype][1]
    for n, k in ((1, unit), (5, 2 * unit), (37, 3 * unit), (64, 9 * 32)):  # rows % 4 != 0 too
        if k % unit:
            continue
        w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32)
        blocks, ref = blocks_of(w, qtype)
        bias = torch.randn(n)
        for rows in (1, 2, 3, 4, 5, 8, 9, 16, 33):
            x = torch.randn(rows, k)
            want = x.double() @ ref.double().T + bias.double()
            got = gguf_matmul(kernel, x, blocks, qtype, bias, n)
            scale = (x.abs().double() @ ref.abs().double().T).max()
            assert (got.double() - want).abs().max() <= 1e-6 * scale + 1e-6, (n, k, rows)
            if variant == default_variant() and rows <= 16:  # the module: this build, <= 16 rows
                layer = GGUFLinear(blocks, qtype, k, bias)
                torch.testing.assert_close(layer(x), got)
    x = torch.randn(2, 20, 3 * unit)  # a prefill: dequantize + F.linear
    blocks, ref = blocks_of(rng.standard_normal((8, 3 * unit)).astype(np.float32), qtype)
    torch.testing.assert_close(GGUFLinear(blocks, qtype, 3 * unit)(x), x @ ref.T, atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_act8_kernels_multiply_integers_exactly(variant):
    """quantize="gguf-a8": activations rounded to 8 bits per 32, then integer dot products
    (csrc/act8.h, x86 builds with AVX2; ARM: test_neon.py) equal that rounding written out
    in PyTorch within float32 summation, for every block format, at 1-33 rows of x (groups of 8 and 4 and single
    rows) and weight rows % 4 != 0, and stay within the rounding's bound of the exact product.
    The portable build has none and says so (the flag then multiplies in float32)."""
    from scratchlm.nn.native import ACT8, FORMATS, act8_block_formats, variants

    if variant not in variants():
        pytest.skip(f"this CPU cannot run the {variant} build")
    kernel = decode_function("gguf_linear", variant)
    if kernel is None:
        pytest.skip("no C compiler")
    if variant == "portable" and platform.machine() in ("x86_64", "AMD64"):
        assert act8_block_formats(variant) == set()  # (aarch64's baseline has NEON: act8_neon.h)
        return
    assert act8_block_formats(variant) == set(QTYPES)
    max_rows = decode_function("act8_max_rows", variant)()
    assert max_rows >= 3  # at least a decode step of 1-3 rows; x86 and ARM: any batch
    rng = np.random.default_rng(4)
    for qtype in QTYPES:
        unit = BLOCKS[qtype][1]
        for n, k in ((5, unit), (37, 2 * unit), (64, 3 * unit)):
            w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32)
            blocks, ref = blocks_of(w, qtype)
            for rows in (1, 3, 4, 5, 8, 9, 13, 33):
                x = torch.randn(rows, k) * torch.rand(rows, 1) * 4
                x[0, :32] = 0  # a run of zeros: scale 0
                y = torch.empty(rows, n)
                kernel(x.data_ptr(), blocks.data_ptr(), FORMATS[qtype] | ACT8, None,
                       y.data_ptr(), rows, n, k)
                exact = x.double() @ ref.double().T
                scale = (x.abs().double() @ ref.abs().double().T).max()
                if rows > max_rows:  # past the build's limit (none has one now): float, exact
                    assert (y.double() - exact).abs().max() <= 1e-6 * scale + 1e-6
                    continue
                want = rounded_reference(x, blocks, qtype, n)
                assert (y.double() - want).abs().max() <= 2e-6 * scale + 1e-6, (qtype, n, rows)
                # the rounding's bound: half a step per x
                step = (x.reshape(rows, -1, 32).abs().amax(-1) / 254).repeat_interleave(32, 1)
                bound = step.double() @ ref.abs().double().T * 4  # |q| <= |w| + |const|
                assert ((y.double() - exact).abs() <= bound + 1e-5 * scale).all(), qtype


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_int8_and_f32_kernels_equal_the_matmul(variant):
    """The int8 and float32 row kernels of each build at 1-33 rows of x, with widths that are
    not a multiple of any vector length (the tails)."""
    from scratchlm.nn.native import variants

    if variant not in variants():
        pytest.skip(f"this CPU cannot run the {variant} build")
    int8, f32 = decode_function("int8_linear", variant), decode_function("f32_linear", variant)
    if int8 is None:
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    for n, k in ((1, 16), (7, 40), (37, 200), (64, 576)):
        w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        scale, bias, w = torch.rand(n) / 100, torch.randn(n), torch.randn(n, k)
        for rows in (1, 3, 4, 5, 8, 9, 33):
            x = torch.randn(rows, k)
            y = torch.empty(rows, n)
            int8(x.data_ptr(), w8.data_ptr(), scale.data_ptr(), bias.data_ptr(), y.data_ptr(),
                 rows, n, k)
            want = (x.double() @ w8.double().T) * scale.double() + bias.double()
            assert (y.double() - want).abs().max() <= 1e-4, (variant, n, k, rows)
            f32(x.data_ptr(), w.data_ptr(), None, y.data_ptr(), rows, n, k)
            assert (y.double() - x.double() @ w.double().T).abs().max() <= 1e-4


def test_each_build_says_which_block_formats_it_vectorizes():
    from scratchlm.nn.native import simd_block_formats, variants

    if decode_function("gguf_linear", "portable") is None:
        pytest.skip("no C compiler")
    assert simd_block_formats("portable") == set()
    for v in ("avx2", "avxvnni"):
        if v in variants():
            assert simd_block_formats(v) == set(QTYPES)
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        assert simd_block_formats("native") == set(QTYPES)


def test_bad_blocks_are_refused():
    with pytest.raises(ValueError, match="takes Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K"):
        GGUFLinear(torch.zeros(2, 20, dtype=torch.uint8), "Q3_K", 32)
    with pytest.raises(ValueError, match="blocks of 256"):
        GGUFLinear(torch.zeros(2, 210, dtype=torch.uint8), "Q6_K", 288)
    with pytest.raises(ValueError, match="blocks of 32"):
        GGUFLinear(torch.zeros(2, 20, dtype=torch.uint8), "Q4_1", 40)
    with pytest.raises(ValueError, match=r"must be uint8 \(rows, 20\)"):
        GGUFLinear(torch.zeros(2, 18, dtype=torch.uint8), "Q4_1", 32)


def test_parts_of_one_format_fuse_exactly():
    rng = np.random.default_rng(2)
    parts = [GGUFLinear(blocks_of(rng.standard_normal((n, 64)).astype(np.float32), "Q4_1")[0],
                        "Q4_1", 64) for n in (8, 4, 4)]
    fused = concat_linears(parts)
    x = torch.randn(3, 64)
    torch.testing.assert_close(fused(x), torch.cat([p(x) for p in parts], dim=-1))
    mixed = [parts[0], GGUFLinear(blocks_of(rng.standard_normal((4, 64)).astype(np.float32),
                                            "Q8_0")[0], "Q8_0", 64)]
    with pytest.raises(TypeError):
        concat_linears(mixed)


def test_numpy_dequantize_serves_without_the_kernels(monkeypatch):
    """No C compiler: the layer's prefill path dequantizes with numpy, to the same values."""
    import scratchlm.nn.gguf_linear as gl

    w = np.random.default_rng(3).standard_normal((6, 256)).astype(np.float32)
    for qtype in QTYPES:
        blocks, ref = blocks_of(w, qtype)
        with_c = gl.dequantize_blocks(blocks, qtype, (6, 256))
        monkeypatch.setattr(gl, "decode_function", lambda *a: None)
        torch.testing.assert_close(gl.dequantize_blocks(blocks, qtype, (6, 256)), with_c,
                                   atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(gl.GGUFLinear(blocks, qtype, 256)(torch.ones(2, 256)),
                                   torch.ones(2, 256) @ ref.T, atol=1e-4, rtol=1e-4)
        monkeypatch.undo()


def test_the_build_without_openmp_runs_on_its_thread_pool(monkeypatch):
    """A compiler without OpenMP (Apple's clang) gets csrc/parallel.h's pthread pool: built here
    that way (SCRATCHLM_NATIVE_OPENMP=0), the kernels give the same results, the pool has
    torch's thread count, and calls from several threads at once each get their own answer."""
    import threading

    from scratchlm.nn import native

    monkeypatch.setenv("SCRATCHLM_NATIVE_OPENMP", "0")
    native.clear_cache()
    try:
        lib = native.load("decode")
        if lib is None:
            pytest.skip("no C compiler")
        assert lib.set_threads(torch.get_num_threads()) == torch.get_num_threads()  # not -1
        kernel = native.decode_function("gguf_linear")
        rng = np.random.default_rng(5)
        cases = []
        for qtype in QTYPES:
            unit = BLOCKS[qtype][1]
            w = rng.standard_normal((37, 2 * unit)).astype(np.float32)
            blocks, ref = blocks_of(w, qtype)
            cases.append((qtype, blocks, ref, torch.randn(5, 2 * unit)))
        errors = []

        def run(i):
            for qtype, blocks, ref, x in cases[i::2]:
                for _ in range(20):
                    got = gguf_matmul(kernel, x, blocks, qtype, None, 37)
                    want = x.double() @ ref.double().T
                    if (got.double() - want).abs().max() > 1e-5 * want.abs().max() + 1e-6:
                        errors.append(qtype)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads) and not errors
    finally:
        monkeypatch.delenv("SCRATCHLM_NATIVE_OPENMP")
        native.clear_cache()

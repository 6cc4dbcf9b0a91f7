from __future__ import annotations

import torch

from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.nn.quant import Int8Linear, quantize_int8


def test_int8_linear_error_is_bounded():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    q = Int8Linear.from_linear(lin)
    assert q.weight_int8.dtype == torch.int8
    w = q.weight_int8.float() * q.scale[:, None]
    assert ((w - lin.weight).abs() <= q.scale[:, None] / 2 + 1e-7).all()
    x = torch.randn(5, 64)
    assert torch.allclose(q(x), torch.nn.functional.linear(x, w, lin.bias), atol=1e-5)


def test_quantized_model_generates_like_the_original():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, context_length=32, n_embd=32, n_layer=2, n_head=2,
                          init="torch")).eval()
    x = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        ref = model(x)
    quantize_int8(model)
    assert isinstance(model.out_head, Int8Linear) and isinstance(model.trf_blocks[0].att.qkv, Int8Linear)
    with torch.no_grad():
        got = model(x)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    out = Engine(model).generate([[1, 2, 3]], SamplingParams(max_new_tokens=5))
    assert len(out[0]) == 5


def test_native_kernel_matches_dequantized_matmul():
    """csrc/decode.c's int8 matvec against F.linear on the dequantized weight: rows not a
    multiple of 4, K not a multiple of 16 (the scalar tails), 1-16 input rows, with and
    without bias."""
    import shutil

    import pytest

    from scratchlm.nn.native import decode_function

    if decode_function("int8_linear") is None:
        assert shutil.which("cc") is None and shutil.which("gcc") is None, "kernel failed to build"
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    for n, k, rows, bias in [(7, 5, 1, True), (33, 70, 3, False), (64, 576, 1, False),
                             (130, 96, 8, True), (13, 160, 16, False)]:
        q = Int8Linear.from_linear(torch.nn.Linear(k, n, bias=bias))
        x = torch.randn(rows, k)
        ref = torch.nn.functional.linear(x, q.weight_int8.float() * q.scale[:, None], q.bias)
        with torch.inference_mode():
            got = q(x)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (n, k, rows, bias)


def test_native_kernel_can_be_switched_off(monkeypatch):
    from scratchlm.nn import native

    monkeypatch.setenv("SCRATCHLM_NATIVE", "0")
    native.clear_cache()
    try:
        assert native.decode_function("int8_linear") is None
        q = Int8Linear.from_linear(torch.nn.Linear(16, 8))
        x = torch.randn(2, 16)
        ref = torch.nn.functional.linear(x, q.weight_int8.float() * q.scale[:, None], q.bias)
        assert torch.allclose(q(x), ref, atol=1e-6)
    finally:
        native.clear_cache()


def test_build_key_covers_every_file_of_csrc(tmp_path):
    """A header or any file beside the source is part of what a built kernel is named by, so
    editing it rebuilds the kernel instead of loading a stale one."""
    import shutil

    from scratchlm.nn.native import CSRC, VARIANTS, build_key

    csrc = tmp_path / "csrc"
    shutil.copytree(CSRC, csrc)
    flags = VARIANTS["native"]
    key = build_key("decode", flags, csrc)
    assert build_key("decode", flags, csrc) == key
    (csrc / "decode.h").write_text("/* a header */\n")
    with_header = build_key("decode", flags, csrc)
    assert with_header != key
    (csrc / "decode.h").write_text("/* the header, edited */\n")
    assert build_key("decode", flags, csrc) not in (key, with_header)
    assert build_key("decode", VARIANTS["portable"], csrc) != build_key("decode", flags, csrc)
    assert build_key("bpe_train", flags, csrc) != build_key("decode", flags, csrc)

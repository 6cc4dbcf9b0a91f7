"""ours -> GGUF -> load_gguf: the same model (F32 logits identical, F16 within 1e-3 of the
logits' scale, Q8_0/Q4_0 close) and the same tokenizer, for every architecture we write."""

from __future__ import annotations

import pytest
import torch

from tiny_models import FAMILIES, tiny
from scratchlm.export.gguf import write_gguf
from scratchlm.models.convert.gguf import GGUFError, read_gguf
from scratchlm.checkpoints.gguf import load_gguf

TEXT = "I had always thought Jack Gisburn rather a cheap genius 12345, café 日本"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_f32_round_trip_gives_identical_logits_and_tokens(family, small_bpe, tmp_path):
    name, changes = FAMILIES[family]
    model = tiny(name, **changes)
    path = write_gguf(model, small_bpe, tmp_path / "m.gguf", "f32")
    back, tok = load_gguf(path)
    x = torch.randint(0, model.cfg.vocab_size, (2, 24))
    # Qwen3.5's A_log is stored as -exp(A_log) (as llama.cpp's converter does): a float32
    # exp and log on the way, not bit-exact
    exact = not family.startswith("qwen35")
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0 if exact else 1e-5,
                                   rtol=0 if exact else 1e-5)
    assert type(back) is type(model)
    if family == "gpt2-book":  # llama.cpp requires the QKV bias: written as zeros
        assert back.cfg.qkv_bias and not back.trf_blocks[0].att.qkv.bias.any()
    else:
        assert back.cfg == model.cfg
    assert tok.encode(TEXT) == small_bpe.encode(TEXT)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("dtype,quant,tol", [("f16", None, 1e-3), ("bf16", None, 1e-2),
                                             ("f32", "q8_0", 2e-2), ("f32", "q4_0", 0.2)])
def test_reduced_precision_stays_close(dtype, quant, tol, small_bpe, tmp_path):
    import gguf

    model = tiny("llama-tiny")
    path = write_gguf(model, small_bpe, tmp_path / "m.gguf", dtype, quant)
    back, _ = load_gguf(path)
    x = torch.randint(0, model.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        want, got = model(x), back(x)
    assert (got - want).abs().max() <= tol * want.abs().max()
    meta, reader = read_gguf(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    want_kind = quant.upper() if quant else dtype.upper()
    assert kinds["blk.0.attn_q.weight"] == want_kind and kinds["blk.0.attn_norm.weight"] == "F32"
    assert meta["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}[
        quant or dtype]
    assert meta["tokenizer.ggml.pre"] == "gpt-2" and meta["llama.block_count"] == 2
    assert gguf.GGMLQuantizationType  # the reader and writer share the package


def test_models_the_format_cannot_hold_are_refused(small_bpe, tmp_path):
    from scratchlm.finetune.classification import add_classifier_head

    with pytest.raises(GGUFError, match="mixture-of-experts gpt model has no llama.cpp"):
        write_gguf(tiny("gpt-tiny", vocab_size=512, moe={"num_experts": 2}), small_bpe,
                   tmp_path / "g.gguf")
    with pytest.raises(GGUFError, match="mixture-of-experts llama"):
        write_gguf(tiny("llama-tiny", moe={"num_experts": 2}), small_bpe, tmp_path / "m.gguf")
    clf = tiny("llama-tiny")
    add_classifier_head(clf, 2)
    with pytest.raises(GGUFError, match="classifier or reward model"):
        write_gguf(clf, small_bpe, tmp_path / "c.gguf")
    with pytest.raises(GGUFError, match="only 512 embedding rows"):
        from scratchlm.tokenizers import get_tokenizer

        write_gguf(tiny("llama-tiny"), get_tokenizer("gpt2"), tmp_path / "v.gguf")
    assert not list(tmp_path.iterdir())


def _llama_cpp_rope_factors(head_dim, base, factor, low, high, old):
    """llama.cpp's converter (conversion/llama.py, LlamaModel.generate_extra_tensors)."""
    import math

    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


@pytest.mark.parametrize("head_dim,base,old", [
    (64, 500000.0, 8192),  # Llama 3.2 1B: three blended frequencies
    (128, 500000.0, 8192),  # Llama 3.1 8B
    (16, 10000.0, 512),  # one blended frequency
    (16, 10000.0, 16),  # none: every frequency kept or divided
])
def test_llama3_rope_scaling_is_the_rope_freqs_llama_cpp_writes_and_reads_back(head_dim, base,
                                                                              old):
    import numpy as np

    from scratchlm.models.convert.gguf import rope_freq_factors, scaling_from_freq_factors

    scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_context_length": old}
    want = _llama_cpp_rope_factors(head_dim, base, 32.0, 1.0, 4.0, old)
    np.testing.assert_allclose(rope_freq_factors(head_dim, base, scaling), want, rtol=1e-6)
    back = scaling_from_freq_factors(want, head_dim, base, "m.gguf")
    np.testing.assert_allclose(rope_freq_factors(head_dim, base, back), want, rtol=1e-5)
    if head_dim >= 64:
        assert back == scaling  # the published settings themselves
    with pytest.raises(GGUFError, match="m.gguf: its rope_freqs are not Llama 3's"):
        scaling_from_freq_factors(want[::-1].copy(), head_dim, base, "m.gguf")


def test_a_scaled_llama_file_holds_rope_freqs_in_f32(small_bpe, tmp_path):
    name, changes = FAMILIES["llama3-scaled"]
    path = write_gguf(tiny(name, **changes), small_bpe, tmp_path / "m.gguf", "f32", "q8_0")
    _, reader = read_gguf(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["rope_freqs.weight"] == "F32"
    with pytest.raises(GGUFError, match="qwen3 GGUF files carry no rope_scaling"):
        write_gguf(tiny("qwen3-tiny", rope_scaling=changes["rope_scaling"]), small_bpe,
                   tmp_path / "q.gguf")

"""K-quant export: our Q4_K / Q5_K / Q6_K (and Q5_0 / Q5_1 fallback) blocks are byte for byte
llama.cpp's reference quantizer's, and each file type's per-tensor mix is llama.cpp's.

Where ``llama-cpp-python`` is installed the blocks are compared with llama.cpp's own
``ggml_quantize_chunk`` and whole files with its ``llama_model_quantize``; everywhere, the
blocks of a fixed input are compared with the hashes llama.cpp gave for it."""

from __future__ import annotations

import ctypes
import hashlib
import os

import numpy as np
import pytest

from scratchlm.export.quant_mix import FILE_TYPES, ModelShape, tensor_type, use_more_bits
from scratchlm.export.quants import quantize
from scratchlm.nn.gguf_blocks import dequantize

QTYPES = ("Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1")
# sha256 (first 32 hex digits) of llama.cpp's ggml_quantize_chunk on _inputs() (llama-cpp-python
# 0.3.36, ggml 0.25.3): a check of the exact bytes that runs without llama.cpp installed
LLAMA_CPP = {"Q4_K": "c72979c507d5b1c9d34ce46edce61ad8", "Q5_K": "0d0c71198f6cdc558ce8fd533283ba68",
             "Q6_K": "6733fea607d49337a62a6828ae88257b", "Q5_0": "87503002db2b3eefcad61889a04f30c6",
             "Q5_1": "11a06a7c38008793bda501ba51626d24"}


def _inputs() -> np.ndarray:
    """Rows at many scales, and the blocks quantizers get wrong: all zero, constant, tiny,
    sparse, a ramp, huge, all positive."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((48, 512)) * rng.uniform(1e-3, 3, (48, 1))).astype(np.float32)
    a[0] = 0.0
    a[1] = 0.5
    a[2, :256] = -2.0
    a[3, :256] = 1e-30
    a[4, ::7] = 0.0
    a[5] = np.linspace(-1, 1, 512, dtype=np.float32)
    a[6] *= 1e4
    a[7, :256] = np.abs(a[7, :256])
    return a


def _kquants_or_skip():
    from scratchlm.nn.native import load

    if load("quantize", "exact") is None:
        pytest.skip("no C compiler")


@pytest.mark.parametrize("qtype", QTYPES)
def test_blocks_are_llama_cpps_bytes(qtype):
    _kquants_or_skip()
    ours = quantize(_inputs(), qtype)
    assert hashlib.sha256(ours.tobytes()).hexdigest()[:32] == LLAMA_CPP[qtype]


@pytest.mark.parametrize("qtype", QTYPES)
def test_blocks_dequantize_close_to_the_weights(qtype):
    _kquants_or_skip()
    a = _inputs()[8:]  # the random rows
    back = dequantize(quantize(a, qtype), qtype, a.shape)
    rms = np.sqrt((a ** 2).mean(axis=1, keepdims=True))
    err = np.sqrt(((back - a) ** 2).mean(axis=1, keepdims=True)) / rms
    bound = {"Q4_K": 0.12, "Q5_K": 0.06, "Q6_K": 0.03, "Q5_0": 0.07, "Q5_1": 0.07}[qtype]
    assert err.max() < bound, err.max()
    import gguf  # our reader's dequantization is the gguf package's

    blocks = quantize(a, qtype)
    ref = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, qtype))
    assert np.array_equal(back, ref.reshape(a.shape))
    zero = quantize(np.zeros((2, 256), np.float32), qtype)
    assert not dequantize(zero, qtype, (2, 256)).any()


def test_k_quant_rows_must_be_whole_super_blocks():
    with pytest.raises(ValueError, match="not a whole number of 256-weight blocks"):
        quantize(np.zeros((4, 576), np.float32), "Q4_K")


def test_the_mix_of_a_smollm2_shaped_model():
    """30 layers of width 576 (not a multiple of 256), tied embeddings: llama.cpp's Q4_K_M is
    mostly Q5_0 and Q8_0 (the fallbacks), K-quants only where rows are 1536 wide."""
    shape = ModelShape(n_layer=30, tied=True)
    more = [i for i in range(30) if use_more_bits(i, 30)]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]

    def t(name, rows_cols, ftype="q4_k_m"):
        return tensor_type(name, rows_cols, ftype, shape)

    assert t("token_embd.weight", (49152, 576)) == "Q8_0"  # the head, 576 % 256: Q8_0
    assert t("blk.3.attn_q.weight", (576, 576)) == "Q5_0"  # Q4_K falls back
    assert t("blk.0.attn_v.weight", (192, 576)) == "Q8_0"  # Q6_K falls back
    assert t("blk.3.attn_v.weight", (192, 576)) == "Q5_0"
    assert t("blk.0.ffn_down.weight", (576, 1536)) == "Q6_K"
    assert t("blk.3.ffn_down.weight", (576, 1536)) == "Q4_K"
    assert t("blk.3.ffn_down.weight", (576, 1536), "q5_k_m") == "Q5_K"
    assert t("blk.3.ffn_gate.weight", (1536, 576), "q5_k_m") == "Q5_1"
    assert t("blk.3.attn_norm.weight", (576,)) is None
    assert t("blk.3.ffn_down.weight", (576, 1536), "q4_0") == "Q4_0"
    assert t("token_embd.weight", (49152, 576), "q4_0") == "Q8_0"  # Q6_K, falling back
    assert t("blk.3.attn_q.weight", (576, 40)) == "F16"  # no block fits


def test_the_mix_of_a_large_gqa_model():
    shape = ModelShape(n_layer=32)
    assert tensor_type("output.weight", (128256, 4096), "q4_k_m", shape) == "Q6_K"
    assert tensor_type("token_embd.weight", (128256, 4096), "q4_k_m", shape) == "Q4_K"
    assert tensor_type("output.weight", (128256, 4096), "q8_0", shape) == "Q8_0"
    assert tensor_type("blk.2.attn_v.weight", (1024, 4096), "q4_k_s", shape) == "Q5_K"
    assert tensor_type("blk.4.attn_v.weight", (1024, 4096), "q4_k_s", shape) == "Q4_K"
    assert tensor_type("blk.3.ffn_down.weight", (4096, 14336), "q4_k_s", shape) == "Q5_K"
    assert tensor_type("blk.31.ffn_down.weight", (4096, 14336), "q6_k", shape) == "Q6_K"
    assert tensor_type("blk.0.ffn_gate_inp.weight", (8, 4096), "q4_k_m", shape) is None
    eight = ModelShape(n_layer=32, n_expert=8)
    assert tensor_type("blk.5.attn_k.weight", (1024, 4096), "q4_k_m", eight) == "Q8_0"
    assert tensor_type("blk.5.attn_output.weight", (4096, 4096), "q4_k_m", eight) == "Q5_K"
    big = ModelShape(n_layer=80, is_70b=True)
    assert tensor_type("blk.13.attn_v.weight", (1024, 8192), "q4_k_m", big) == "Q5_K"
    assert tensor_type("blk.12.attn_v.weight", (1024, 8192), "q4_k_m", big) == "Q6_K"


# ---- against llama.cpp itself ------------------------------------------------------------

def _ggml():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib",
                                   "libggml-base.so"))
    fn = lib.ggml_quantize_chunk
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 \
        + [ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    return fn


def _theirs(fn, a: np.ndarray, qtype: str) -> np.ndarray:
    from gguf import GGMLQuantizationType

    a = np.ascontiguousarray(a, np.float32)
    out = np.zeros(a.size * 2, np.uint8)
    n = fn(int(getattr(GGMLQuantizationType, qtype)), a.ctypes.data, out.ctypes.data, 0,
           a.shape[0], a.shape[1], None)
    return out[:n]


@pytest.mark.parametrize("qtype", QTYPES)
def test_blocks_equal_llama_cpps_on_real_weights(qtype):
    """SmolLM2's ffn_down matrices (the rows that are whole super-blocks), and the fixed input."""
    _kquants_or_skip()
    fn = _ggml()
    from scratchlm.checkpoints.names import smollm2_gguf
    from scratchlm.models.convert.gguf import dequantize, read_gguf

    _, file = read_gguf(smollm2_gguf())
    for t in file.tensors:
        if t.name not in ("blk.0.ffn_down.weight", "blk.17.ffn_down.weight"):
            continue
        name, shape = t.name, tuple(int(n) for n in reversed(t.shape.tolist()))
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type.name, shape), np.float32)
        assert np.array_equal(quantize(w, qtype).reshape(-1), _theirs(fn, w, qtype)), name
    assert np.array_equal(quantize(_inputs(), qtype).reshape(-1), _theirs(fn, _inputs(), qtype))


def _wide(family: str):
    """The tiny model of each architecture we write, 256 wide so that K-quants occur (the
    16-layer Llama also has use_more_bits layers; the MoE has 8 experts, llama.cpp's special
    case)."""
    from tiny_models import FAMILIES, tiny

    name, changes = FAMILIES[family]
    changes = {**changes, "n_embd": 256, "n_head": 4}
    if family.startswith("llama"):
        changes.update(head_dim=64, intermediate_size=768, n_layer=16, n_kv_head=2)
    elif family == "qwen3moe":
        changes.update(head_dim=64, moe={"num_experts": 8, "top_k": 2, "intermediate_size": 256})
    elif not family.startswith("gpt2"):
        changes.update(head_dim=64, intermediate_size=512)
    if family == "gemma3":
        changes["query_pre_attn_scalar"] = 64
    return tiny(name, **changes)


@pytest.mark.parametrize("family", ["gpt2", "gpt2-book", "llama", "llama-untied", "qwen3",
                                    "qwen3moe", "gemma3", "olmo2", "gpt-oss", "qwen35",
                                    "qwen35moe", "gemma4", "gemma4-moe"])
def test_every_file_type_equals_llama_cpps_quantize(family, small_bpe, tmp_path):
    """Our --quant FILE equals llama.cpp quantizing our F32 file: every tensor's type and
    bytes, for each file type and each architecture we write."""
    llama_cpp = pytest.importorskip("llama_cpp")
    _kquants_or_skip()
    import gguf

    from scratchlm.export.gguf import write_gguf

    def tensors(path):
        return {t.name: (t.tensor_type.name, t.data.tobytes())
                for t in gguf.GGUFReader(str(path)).tensors}

    model = _wide(family)
    f32 = write_gguf(model, small_bpe, tmp_path / "f32.gguf", "f32")
    for ftype, spec in FILE_TYPES.items():
        ours = tensors(write_gguf(model, small_bpe, tmp_path / f"{ftype}.gguf", "f32", ftype))
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = spec.code, 2
        ref = tmp_path / f"ref-{ftype}.gguf"
        assert llama_cpp.llama_model_quantize(str(f32).encode(), str(ref).encode(),
                                              ctypes.byref(params)) == 0
        theirs = tensors(ref)
        assert set(ours) == set(theirs)
        assert {k: v[0] for k, v in ours.items()} == {k: v[0] for k, v in theirs.items()}, ftype
        assert all(ours[k][1] == theirs[k][1] for k in ours), ftype
        reader = gguf.GGUFReader(str(tmp_path / f"{ftype}.gguf"))
        assert reader.fields["general.file_type"].parts[-1][0] == spec.code


@pytest.mark.parametrize("family", ["llama", "qwen3moe"])
def test_requantizing_a_gguf_file_writes_the_model_exporters_tensors(family, small_bpe, tmp_path):
    """``export --model F16.gguf --quant q4_k_m`` rewrites the file's tensors without building a
    model (no torch imported); its tensors and their types are those the model exporter writes
    from the same file, and its metadata is the file's."""
    import subprocess
    import sys

    import gguf

    from scratchlm.export.gguf import write_gguf

    _kquants_or_skip()
    f16 = write_gguf(_wide(family), small_bpe, tmp_path / "f16.gguf", "f16")
    script = ("import sys\nfrom scratchlm.recipes.configs import ExportConfig\n"
              "from scratchlm.recipes.export import main\n"
              f"main(ExportConfig(model={str(f16)!r}, quant='q4_k_m', "
              f"out={str(tmp_path / 'rq.gguf')!r}))\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    model_path = tmp_path / "model" / "rq.gguf"  # the model exporter, from the same file
    model, tok = load_model_and_tokenizer(str(f16))
    write_gguf(model, tok, model_path, "f16", "q4_k_m")
    ours = gguf.GGUFReader(str(tmp_path / "rq.gguf"))
    ref = gguf.GGUFReader(str(model_path))
    got = {t.name: (t.tensor_type.name, t.data.tobytes()) for t in ours.tensors}
    want = {t.name: (t.tensor_type.name, t.data.tobytes()) for t in ref.tensors}
    assert got == want
    assert ours.fields["general.file_type"].parts[-1][0] == FILE_TYPES["q4_k_m"].code
    src = gguf.GGUFReader(str(f16))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", f"{family}.block_count"):
        assert ours.fields[key].contents() == src.fields[key].contents(), key
    assert (tmp_path / "rq.Modelfile").read_text().startswith("FROM ./rq.gguf")


def test_requantizing_equals_llama_cpps_quantize_of_the_same_file(small_bpe, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    _kquants_or_skip()
    import gguf

    from scratchlm.export.gguf import write_gguf
    from scratchlm.export.requantize import requantize_gguf

    f16 = write_gguf(_wide("llama"), small_bpe, tmp_path / "f16.gguf", "f16")
    for ftype in ("q4_k_m", "q5_k_m", "q6_k"):
        requantize_gguf(f16, tmp_path / "ours.gguf", ftype)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = FILE_TYPES[ftype].code, 2
        ref = str(tmp_path / "ref.gguf").encode()
        assert llama_cpp.llama_model_quantize(str(f16).encode(), ref, ctypes.byref(params)) == 0
        got = {t.name: (t.tensor_type.name, t.data.tobytes())
               for t in gguf.GGUFReader(str(tmp_path / "ours.gguf")).tensors}
        want = {t.name: (t.tensor_type.name, t.data.tobytes())
                for t in gguf.GGUFReader(str(tmp_path / "ref.gguf")).tensors}
        assert got == want, ftype

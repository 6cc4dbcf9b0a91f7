"""llama.cpp itself reads what we export (runs when ``llama-cpp-python`` is installed; it
builds llama.cpp from source, so it is not in the default test setup): the tokenizer splits
text into our ids and its logits match ours, for a GPT (llama.cpp's gpt2 architecture, our own
BPE) and a Llama (SmolLM2's tokenizer and pre-tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import tiny
from scratchlm.export.gguf import write_gguf

llama_cpp = pytest.importorskip("llama_cpp")

TEXT = "I had always thought Jack Gisburn rather a cheap genius, 12 café"


def _llama_logits(path, ids):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, verbose=False,
                          logits_all=True, type_k=0, type_v=0)  # an f32 cache, not f16
    llm.eval(ids)
    return llm, np.array(llm.scores[: len(ids)])


@pytest.mark.parametrize("name,changes", [
    ("gpt-tiny", {"vocab_size": 512}),
    ("gpt-tiny", {"vocab_size": 512, "qkv_bias": False, "tie_embeddings": False}),
    ("llama-tiny", {}),
    ("qwen3-tiny", {}),
    ("llama-tiny", {"head_dim": 64, "rope_base": 500000.0, "rope_scaling": {  # rope_freqs
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_context_length": 64}}),
    # llama.cpp's olmo2: 3 local layers (window 8) to 1 global with YaRN; a tied head is
    # written all the same (llama.cpp's olmo2 requires output.weight)
    ("olmo3-tiny", {}),
    ("olmo3-tiny", {"tie_embeddings": True, "n_layer": 8}),
    # llama.cpp's gpt-oss: sinks, biases, 8 clamped-SwiGLU experts (2 per token) with biases,
    # alternating windows of 8, YaRN on every layer (with the correction range rounded, as
    # llama.cpp always does it)
    ("gpt-oss-tiny", {"rope_scaling": {"type": "yarn", "factor": 4.0,
                                       "original_context_length": 32}}),
    # llama.cpp's qwen35: 3 Gated DeltaNet layers (2 value heads per key head) to 1 gated
    # attention layer with partial RoPE; and qwen35moe with a shared expert
    ("qwen3.5-tiny", {}),
    ("qwen3.5-tiny", {"n_layer": 8, "linear_value_heads": 2, "tie_embeddings": False}),
    ("qwen3.5-tiny", {"moe": {"num_experts": 4, "top_k": 2, "intermediate_size": 32,
                              "shared_expert_size": 48}}),
    ("gemma3-tiny", {"n_layer": 6, "sliding_window_pattern": 6}),  # 4e-4 (GELU's table)
    # llama.cpp's gemma4: per-layer embeddings, KV-shared layers, proportional RoPE through
    # rope_freqs; and keys as values with a mixture beside the dense FFN
    ("gemma4-tiny", {}),
    ("gemma4-tiny", {"k_eq_v": True, "ple_dim": 0, "kv_shared_layers": 0,
                     "double_wide_mlp": False,
                     "moe": {"num_experts": 4, "top_k": 2, "intermediate_size": 32}}),
])
def test_llama_cpp_reads_our_gguf(name, changes, small_bpe, tmp_path):
    model = tiny(name, **changes)
    path = write_gguf(model, small_bpe, tmp_path / "m.gguf", "f32")
    ids = small_bpe.encode(TEXT)
    llm, theirs = _llama_logits(path, ids)
    assert llm.tokenize(TEXT.encode(), add_bos=False) == ids
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    # llama.cpp's CPU GELU looks x up in an fp16 table (ggml-cpu/vec.h, GGML_GELU_FP16): a
    # Gemma 4 with GELU in its FFN, per-layer gates and experts drifts to 3e-3 (with the
    # table's rounding copied on our side, 7e-4)
    tol = 1e-2 if name.startswith("gemma4") else 1e-3
    assert np.abs(theirs - ours).max() <= tol * np.abs(ours).max()


def test_llama_cpp_tokenizes_smollm2_as_we_do(tmp_path):
    from scratchlm.models.convert.gguf import read_gguf
    from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer
    from scratchlm.checkpoints.names import smollm2_gguf

    tok = gguf_tokenizer(read_gguf(smollm2_gguf())[0])
    path = write_gguf(tiny("llama-tiny", vocab_size=49152), tok, tmp_path / "s.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
    text = TEXT + " 2026 numbers 1234567, naïve 日本語"
    assert llm.tokenize(text.encode(), add_bos=False) == tok.encode(text)

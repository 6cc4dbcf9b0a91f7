"""The embedded SmolLM2 (Q4_1 GGUF) run at the file's own precision (``--quantize gguf``):
the same weights as the dequantized fp32 model, so the same greedy tokens and perplexity."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generation.engine import Engine, SamplingParams
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.checkpoints.names import smollm2_gguf
from scratchlm.nn.gguf_linear import GGUFEmbedding, GGUFLinear

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
           "1, 2, 3, 4,", "Water boils at"]


@pytest.fixture(scope="module")
def pair():
    fp32, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    blocks, _ = load_model_and_tokenizer("smollm2-135m-instruct", quantize="gguf")
    return fp32, blocks, tok


def test_layers_keep_the_files_blocks(pair):
    _, model, _ = pair
    layers = [m for m in model.modules() if isinstance(m, GGUFLinear)]
    # 30 blocks x (fused qkv, out, fused gate/up, down) + the tied head (Q8_0 embedding)
    assert len(layers) == 30 * 4 + 1
    assert model.out_head.qtype == "Q8_0" and model.trf_blocks[0].att.qkv_proj.qtype == "Q4_1"
    # the embedding table and the tied head share the file's bytes: one copy
    assert isinstance(model.tok_emb, GGUFEmbedding)
    assert model.tok_emb.blocks.data_ptr() == model.out_head.blocks.data_ptr()
    size = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in
                                                       (*model.parameters(), *model.buffers())}.values())
    assert size <= 1.2 * smollm2_gguf().stat().st_size
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert Engine(model).native is not None  # decode steps in the native layer


def test_same_greedy_tokens_as_the_dequantized_model(pair):
    fp32, blocks, tok = pair
    params = SamplingParams(max_new_tokens=24)
    ids = [tok.encode(p) for p in PROMPTS]
    assert Engine(blocks).generate(ids, params) == Engine(fp32).generate(ids, params)
    for one in ids:  # batch 1 takes the one-row kernel path
        assert Engine(blocks).generate([one], params) == Engine(fp32).generate([one], params)


def test_same_perplexity_as_the_dequantized_model(pair, verdict_text):
    fp32, blocks, tok = pair
    ids = torch.tensor([tok.encode(verdict_text)[:257]])
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:])
                  for m in (fp32, blocks)]
    ppl = [float(torch.exp(v)) for v in losses]
    assert abs(ppl[0] - ppl[1]) < 0.01, ppl


def test_quantize_gguf_needs_a_gguf_file(tmp_path):
    for mode in ("gguf", "gguf-a8"):
        with pytest.raises(ValueError, match="is not a .gguf file"):
            load_model_and_tokenizer(str(tmp_path), quantize=mode)
    with pytest.raises(ValueError, match="CPU's float32 decode path"):
        load_model_and_tokenizer("smollm2-135m-instruct", quantize="gguf-a8",
                                 dtype=torch.bfloat16)


def test_8_bit_activations_decode_as_llama_cpp_multiplies(pair, monkeypatch):
    """quantize="gguf-a8": the same blocks, a decode step's activations rounded to 8 bits per
    32 (csrc/act8.h). The native layer and the PyTorch modules (which call the same kernel for
    a step's rows) give the same logits; against the float32 blocks the logits move by about
    the rounding's share, and the greedy next token is the same."""
    from scratchlm.nn.native import act8_block_formats, decode_function

    if not {"Q4_1", "Q8_0"} <= act8_block_formats():
        with pytest.raises(ValueError, match="no 8-bit-activation path for"):
            load_model_and_tokenizer("smollm2-135m-instruct", quantize="gguf-a8")
        pytest.skip("this build has no 8-bit-activation kernels (x86 with AVX2 only)")
    _, blocks, tok = pair
    a8, _ = load_model_and_tokenizer("smollm2-135m-instruct", quantize="gguf-a8")
    layers = [m for m in a8.modules() if isinstance(m, GGUFLinear)]
    assert len(layers) == 30 * 4 + 1 and all(m.act8 for m in layers)
    assert decode_function("llama_layer") is not None
    ids = [tok.encode(p) for p in PROMPTS[:3]]  # three rows: the integer path (< 4 rows)
    width = max(map(len, ids))
    pad = torch.tensor([width - len(i) for i in ids])
    idx = torch.tensor([[0] * (width - len(i)) + i for i in ids])
    with torch.inference_mode():
        logits = {}
        for key, model in (("native", a8), ("modules", a8), ("float", blocks)):
            engine = Engine(model)
            assert engine.native is not None
            if key == "modules":
                engine.native = None
            cache = engine.new_cache(3, width + 4, pad)
            engine._last_logits(idx, cache)  # the prompt: dequantized blocks, float32
            step = torch.tensor([[tok.encode(" the")[0]]] * 3)
            logits[key] = engine._last_logits(step, cache)
    torch.testing.assert_close(logits["native"], logits["modules"], atol=1e-4, rtol=1e-4)
    # the rounding through 30 layers moves a logit by 4% of the mean one on average (written
    # out in PyTorch, rounding every Linear's input per 32 moves them as much: 3.5%)
    moved = (logits["native"] - logits["float"]).abs()
    assert 1e-3 < moved.mean() < 0.08 * logits["float"].abs().mean(), moved.mean()
    assert torch.equal(logits["native"].argmax(-1), logits["float"].argmax(-1))


def test_auto_keeps_a_gguf_files_blocks_only_where_they_run(tmp_path, monkeypatch):
    from scratchlm.api import LLM
    from scratchlm.checkpoints.load import auto_quantize
    from scratchlm.nn.native import variants

    monkeypatch.delenv("SCRATCHLM_NATIVE_VARIANT", raising=False)  # the default build
    from scratchlm.nn.native import act8_block_formats

    integer = {"Q4_1", "Q8_0"} <= act8_block_formats()  # x86 with AVX2, aarch64
    assert auto_quantize("smollm2-135m-instruct") == ("gguf-a8" if integer else "gguf")
    # the build decides: its blocks with 8-bit activations where the kernel has integer dot
    # products for Q4_1 and Q8_0 (the file's formats: AVX-512 and AVX2 builds), int8 where
    # only the generic path would run them
    for variant, want in (("avx2", "gguf-a8"), ("avxvnni", "gguf-a8"), ("portable", "int8")):
        if variant in variants():
            monkeypatch.setenv("SCRATCHLM_NATIVE_VARIANT", variant)
            assert auto_quantize("smollm2-135m-instruct") == want, variant
    monkeypatch.delenv("SCRATCHLM_NATIVE_VARIANT")
    assert auto_quantize("smollm2-135m-instruct", "cuda") is None  # the kernels are CPU code
    assert auto_quantize("smollm2-135m-instruct", dtype=torch.bfloat16) is None
    assert auto_quantize(str(tmp_path)) is None  # a model folder: its weights as stored
    llm = LLM.load("smollm2-135m-instruct")  # the default: "auto"
    assert isinstance(llm.model.out_head, GGUFLinear) and llm.engine.native is not None
    for none in (None, "none"):  # "none": what a flag says
        model, _ = load_model_and_tokenizer("smollm2-135m-instruct", quantize=none)
        assert type(model.out_head) is torch.nn.Linear

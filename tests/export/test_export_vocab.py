"""Every tokenizer we export is described as byte-level BPE that encodes token for token as
the original: GPT-2's tiktoken, our own BPE, and an HF byte-level BPE (SmolLM2's)."""

from __future__ import annotations

import pytest

from scratchlm.export.vocab import VocabError, byte_bpe

TEXT = ("Hello, world! It's 2026: 12345 apples, naïve café, Grüße, 日本語のテキスト, "
        "русский текст, emoji 🎉🚀, tabs\tand\nnewlines  double  spaces")


def test_gpt2_tiktoken_as_hf_bpe_encodes_the_same(gpt2_tok):
    bpe = byte_bpe(gpt2_tok)
    assert len(bpe.tokens) == 50257 and len(bpe.merges) == 50000 and bpe.pre == "gpt-2"
    assert bpe.tokens[bpe.eos_id] == "<|endoftext|>"
    hf = bpe.to_hf()
    assert hf.encode(TEXT) == gpt2_tok.encode(TEXT)
    assert hf.decode(gpt2_tok.encode(TEXT)) == TEXT


def test_our_trained_bpe_as_hf_bpe_encodes_the_same(verdict_text):
    from scratchlm.tokenizers import BPETokenizer

    ours = BPETokenizer.train(verdict_text, vocab_size=400, special_tokens=["<|endoftext|>"],
                               progress=False)
    bpe = byte_bpe(ours)
    hf = bpe.to_hf()
    for text in (TEXT, verdict_text[:2000]):
        assert hf.encode(text) == ours.encode(text)
    assert bpe.eos_id == ours.special_tokens["<|endoftext|>"]


def test_smollm2_hf_tokenizer_keeps_its_pre_tokenizer_and_template():
    from scratchlm.models.convert.gguf import read_gguf
    from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer
    from scratchlm.checkpoints.names import smollm2_gguf

    tok = gguf_tokenizer(read_gguf(smollm2_gguf())[0])
    bpe = byte_bpe(tok)
    assert bpe.pre == "smollm" and "<|im_start|>" in bpe.chat_template
    assert bpe.to_hf().encode(TEXT) == tok.encode(TEXT)


def test_a_tokenizer_that_is_not_byte_level_bpe_is_refused():
    from scratchlm.tokenizers import CharTokenizer

    with pytest.raises(VocabError, match="cannot be exported"):
        byte_bpe(CharTokenizer.train("abc"))

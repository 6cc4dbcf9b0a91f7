from __future__ import annotations

import pytest

from scratchlm.tokenizers import CharTokenizer, SimpleTokenizerV1, SimpleTokenizerV2
from scratchlm.tokenizers.simple import EOT, UNK, build_vocab


def test_v1_book_example(verdict_text):
    vocab = build_vocab(verdict_text)
    assert len(vocab) == 1130
    tok = SimpleTokenizerV1(vocab)
    text = """"It's the last he painted, you know," Mrs. Gisburn said with pardonable pride."""
    ids = tok.encode(text)
    assert ids == [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108,
                   754, 793, 7]
    assert tok.decode(ids) == """" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride."""


def test_v1_unknown_word_is_named(verdict_text):
    tok = SimpleTokenizerV1(build_vocab(verdict_text))
    with pytest.raises(ValueError, match="'Hello'"):
        tok.encode("Hello, do you like tea?")


def test_v2_book_example(verdict_text):
    tok = SimpleTokenizerV2(build_vocab(verdict_text, [EOT, UNK]))
    assert tok.vocab_size == 1132
    text = " <|endoftext|> ".join(("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    ids = tok.encode(text)
    assert ids == [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]
    assert tok.decode(ids) == ("<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces "
                               "of the <|unk|>.")


def test_char_tokenizer_round_trip(tmp_path):
    tok = CharTokenizer.train("hello world")
    assert tok.vocab_size == 8
    assert tok.decode(tok.encode("low hell")) == "low hell"
    tok.save(tmp_path / "t.json")
    assert CharTokenizer.load(tmp_path / "t.json").encode("held") == tok.encode("held")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("zoo")

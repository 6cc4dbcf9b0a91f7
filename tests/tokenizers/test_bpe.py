"""The from-scratch BPE: training, and GPT-2 encoding token for token like tiktoken."""

from __future__ import annotations

from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.downloads.sources import fetch
from scratchlm.tokenizers import BPETokenizer
from scratchlm.tokenizers.bpe import GPT2_PATTERN, merge_pair


def test_known_gpt2_ids(gpt2_scratch, gpt2_tok):
    for tok in (gpt2_scratch, gpt2_tok):
        assert tok.encode("Hello, world") == [15496, 11, 995]
        assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]
        assert tok.vocab_size == 50257 and tok.eos_id == 50256


@pytest.mark.parametrize("name", ["the-verdict", "tinyshakespeare"])
def test_corpus_matches_tiktoken(name, gpt2_scratch, gpt2_tok):
    text = fetch(name).read_text(encoding="utf-8")
    ids = gpt2_scratch.encode(text)
    assert ids == gpt2_tok.encode(text)
    assert gpt2_scratch.decode(ids) == text
    if name == "the-verdict":
        assert len(ids) == 5145


def test_every_sms_message_matches_tiktoken(gpt2_scratch, gpt2_tok):
    lines = fetch("sms-spam").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5574
    for line in lines:
        text = line.split("\t", 1)[1]
        assert gpt2_scratch.encode(text) == gpt2_tok.encode(text), text


# Code points unassigned in Python's Unicode tables (Cn) are left out: the `regex` module's
# newer tables call some of them letters (U+3D000, say) where tiktoken's engine does not, so
# the two pre-tokenizers may split them differently; that is the tables, not our BPE.
texts = st.lists(
    st.one_of(
        st.characters(exclude_categories=("Cn",)),
        st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "'s", "'ll", "😀", "👩‍👩‍👧", "é", "́", "\u00a0",
                         "\u3000", "123", "...", "--"]),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_random_strings_match_tiktoken_and_round_trip(gpt2_scratch, gpt2_tok, s):
    ids = gpt2_scratch.encode(s)
    assert ids == gpt2_tok.encode(s)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form: both give U+FFFD
        assert "\ufffd" in gpt2_scratch.decode(ids)
    else:
        assert gpt2_scratch.decode(ids) == s


def test_special_tokens_only_when_allowed(gpt2_scratch):
    text = "a<|endoftext|>b"
    with pytest.raises(ValueError, match="allowed_special"):
        gpt2_scratch.encode(text)
    assert gpt2_scratch.encode(text, allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    assert gpt2_scratch.encode(text, allowed_special="all") == [64, 50256, 65]
    # as plain text it is several ordinary tokens
    assert 50256 not in gpt2_scratch.encode_ordinary(text)


def naive_train(text: str, n_merges: int) -> list[tuple[int, int, int]]:
    """Reference trainer: recount every pair after each merge (slow, obviously right)."""
    words = Counter(regex.findall(GPT2_PATTERN, text))
    seqs = {w: list(w.encode()) for w in words}
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts: Counter = Counter()
        for w, ids in seqs.items():
            for p in zip(ids, ids[1:]):
                counts[p] += words[w]
        if not counts:
            break
        best_count = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best_count)  # same tie-break as heap
        merges.append((pair[0], pair[1], new_id))
        seqs = {w: merge_pair(ids, pair, new_id) for w, ids in seqs.items()}
    return merges


def test_incremental_training_equals_naive_recount(verdict_text):
    text = verdict_text[:6000]
    tok = BPETokenizer.train(text, 256 + 150 + 1, progress=False)
    assert tok.merges == naive_train(text, 150)
    assert tok.special_tokens == {"<|endoftext|>": 406}


def test_trained_tokenizer_round_trips_and_saves(tmp_path, verdict_text):
    tok = BPETokenizer.train(verdict_text, 600, progress=False)
    assert tok.vocab_size == 600
    ids = tok.encode(verdict_text)
    assert len(ids) < len(verdict_text.encode()) / 2  # it compresses
    assert tok.decode(ids) == verdict_text
    tok.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    s = "Gisburn's pictures — café ☕\n\n"
    assert again.encode(s) == tok.encode(s) and again.decode(again.encode(s)) == s


def test_training_ignores_special_strings_in_text():
    tok = BPETokenizer.train("ab ab<|endoftext|>ab ab", 260, progress=False)
    learned = {tok.vocab[new] for _, _, new in tok.merges}
    assert not any(b"<|" in v or b"|>" in v for v in learned)


def test_hf_tokenizers_agree(gpt2_tok, verdict_text):
    """A third, independent implementation built from the same files agrees too."""
    import json

    from scratchlm.tokenizers import HFTokenizer

    enc = json.loads(fetch("gpt2-encoder").read_text())
    tokens = sorted(enc, key=enc.get)
    merges = fetch("gpt2-vocab").read_text(encoding="utf-8").split("\n")[1:]
    hf = HFTokenizer.from_vocab_merges(tokens, [m for m in merges if m],
                                       special_tokens=["<|endoftext|>"], eos_token="<|endoftext|>")
    assert hf.encode(verdict_text) == gpt2_tok.encode(verdict_text)
    assert hf.eos_id == 50256
    assert hf.decode(hf.encode(verdict_text)) == verdict_text

"""SentencePiece vocabularies (Gemma's, Llama 2's) through GGUF: a model exported with one and
loaded back encodes token for token as transformers' tokenizer built from the same
``tokenizer.model``, and so do llama.cpp (when installed) and transformers reading our file.

The vocabularies are trained here with the ``sentencepiece`` library (BPE with byte fallback, as
Gemma's and Llama 2's are), so that no download is needed."""

from __future__ import annotations

import io
import json

import pytest

from tiny_models import tiny

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

TEXT = ("Hello world, Grüße  aus München! naïve café, 日本語のテキスト, Привет мир 😀 "
        "<start_of_turn>user\n  two  spaces\ttab, numbers 12345")


@pytest.fixture(scope="module")
def spm_tokenizers(tmp_path_factory, verdict_text):
    """{"gemma": ..., "llama": ...}: (transformers' tokenizer, the folder it was saved in),
    from SentencePiece BPE models trained on The Verdict and a multilingual line: Gemma's kind
    (no space prefix, its turn markers) and Llama 2's (a space prefix)."""
    multi = TEXT.replace("<start_of_turn>", "")
    out = {}
    for kind, prefix, cls in (("gemma", False, "GemmaTokenizer"), ("llama", True, "LlamaTokenizer")):
        folder = tmp_path_factory.mktemp(f"spm-{kind}")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(verdict_text.splitlines() + [multi] * 3), model_writer=buf,
            vocab_size=600, model_type="bpe", byte_fallback=True, character_coverage=1.0,
            add_dummy_prefix=prefix, remove_extra_whitespaces=False, minloglevel=2,
            normalization_rule_name="identity",
            user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
            unk_id=0, bos_id=1, eos_id=2, pad_id=3)
        (folder / "tokenizer.model").write_bytes(buf.getvalue())
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": cls, "add_bos_token": False, "add_eos_token": False}))
        hf = transformers.AutoTokenizer.from_pretrained(folder)
        hf.backend_tokenizer.save(str(folder / "tokenizer.json"))
        reference = spm.SentencePieceProcessor(model_proto=buf.getvalue())
        assert hf.encode(TEXT, add_special_tokens=False) == reference.encode(TEXT)
        out[kind] = hf, folder
    return out


@pytest.mark.parametrize("kind,family,changes", [
    ("gemma", "gemma3-tiny", {"n_layer": 6, "sliding_window_pattern": 6}),
    ("llama", "llama-tiny", {}),
])
def test_a_sentencepiece_vocabulary_round_trips(kind, family, changes, spm_tokenizers,
                                                 tmp_path):
    import gguf

    from scratchlm.checkpoints.gguf import load_gguf
    from scratchlm.export.gguf import write_gguf
    from scratchlm.tokenizers.backends import HFTokenizer

    hf, folder = spm_tokenizers[kind]
    ours = HFTokenizer.from_file(folder / "tokenizer.json", eos_token="</s>", bos_token="<s>")
    want = hf.encode(TEXT, add_special_tokens=False)
    assert ours.encode(TEXT) == want
    path = write_gguf(tiny(family, vocab_size=640, **changes), ours, tmp_path / "m.gguf", "f32")
    fields = gguf.GGUFReader(str(path)).fields
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    assert bool(fields["tokenizer.ggml.add_space_prefix"].parts[-1][0]) == (kind == "llama")
    _, back = load_gguf(path)
    assert back.encode(TEXT) == want
    assert back.decode(want) == hf.decode(want)
    assert back.encode("<start_of_turn>") == [hf.convert_tokens_to_ids("<start_of_turn>")]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert theirs.encode(TEXT, add_special_tokens=False) == want  # transformers reads it too


def test_llama_cpp_tokenizes_our_sentencepiece_file(spm_tokenizers, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from scratchlm.export.gguf import write_gguf
    from scratchlm.tokenizers.backends import HFTokenizer

    for kind, family, changes in (("gemma", "gemma3-tiny", {"n_layer": 6,
                                                            "sliding_window_pattern": 6}),
                                  ("llama", "llama-tiny", {})):
        hf, folder = spm_tokenizers[kind]
        ours = HFTokenizer.from_file(folder / "tokenizer.json", eos_token="</s>", bos_token="<s>")
        path = write_gguf(tiny(family, vocab_size=640, **changes), ours,
                          tmp_path / f"{kind}.gguf", "f32")
        # llama.cpp puts a space prefix on the text after a special token where the vocabulary
        # has one ("<start_of_turn>user" -> "▁user"); sentencepiece and transformers do not
        text = TEXT if kind == "gemma" else TEXT.replace("<start_of_turn>", "")
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
                hf.encode(text, add_special_tokens=False), kind
        finally:
            llm.close()


def test_bad_sentencepiece_metadata_is_named(tmp_path):
    from scratchlm.checkpoints.files import CheckpointError
    from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer

    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "a", "b"],
            "tokenizer.ggml.scores": [0.0, -1.0], "tokenizer.ggml.token_type": [2, 1, 1]}
    with pytest.raises(CheckpointError, match="'tokenizer.ggml.scores' does not give one"):
        gguf_tokenizer(meta, "f.gguf")
    meta["tokenizer.ggml.scores"] = [0.0, -1.0, -2.0]
    meta["tokenizer.ggml.token_type"] = [2, 1, 9]
    with pytest.raises(CheckpointError, match="'tokenizer.ggml.token_type'"):
        gguf_tokenizer(meta, "f.gguf")
    meta["tokenizer.ggml.token_type"] = [2, 1, 1]
    meta["tokenizer.ggml.eos_token_id"] = 7
    with pytest.raises(CheckpointError, match="eos_token_id' = 7 is not a token id below 3"):
        gguf_tokenizer(meta, "f.gguf")
    del meta["tokenizer.ggml.eos_token_id"]
    meta["tokenizer.ggml.add_space_prefix"] = False
    assert gguf_tokenizer(meta, "f.gguf").encode("ab") == [1, 2]

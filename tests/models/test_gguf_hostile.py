"""Hostile GGUF headers: counts and lengths that do not fit the file, impossible tensor shapes,
a tensor table that points past the end, token ids outside the vocabulary. Each is a
``GGUFError`` / ``CheckpointError`` naming the file and the field, found before anything is
allocated (checked with tracemalloc) and without a traceback from inside the ``gguf`` package."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from scratchlm.models.convert.gguf import GGUFError  # noqa: E402
from scratchlm.models.convert.gguf_layout import read_layout  # noqa: E402
from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer  # noqa: E402
from scratchlm.checkpoints.files import CheckpointError
from scratchlm.checkpoints.gguf import load_gguf  # noqa: E402


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_uint32("qwen3.block_count", 2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "c"])
    w.add_token_types([1, 1, 1])
    w.add_tensor("token_embd.weight", np.zeros((3, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def patched(path, after: str, skip: int, fmt: str, value, name="bad.gguf"):
    """A copy of ``path`` with ``value`` packed ``skip`` bytes after the string ``after``."""
    data = bytearray(path.read_bytes())
    at = data.find(after.encode()) + len(after) + skip if after else skip
    struct.pack_into("<" + fmt, data, at, value)
    out = path.with_name(name)
    out.write_bytes(bytes(data))
    return out


CASES = [  # (field named in the error, where: after-string, skip, format, value)
    ("metadata_kv_count", ("", 16, "Q", 1 << 40)),
    ("metadata_kv_count", ("", 16, "Q", 10**6)),
    ("tensor_count", ("", 8, "Q", 1 << 40)),
    ("'tokenizer.ggml.token_type': an array of 1099511627776",
     ("tokenizer.ggml.token_type", 8, "Q", 1 << 40)),
    ("'tokenizer.ggml.tokens': an array", ("tokenizer.ggml.tokens", 8, "Q", 1 << 40)),
    ("'tokenizer.ggml.tokens': a string of", ("tokenizer.ggml.tokens", 16, "Q", 1 << 40)),
    ("'tokenizer.ggml.tokens': unknown array item type", ("tokenizer.ggml.tokens", 4, "I", 99)),
    ("'token_embd.weight': 1073741824 dimensions", ("token_embd.weight", 0, "I", 1 << 30)),
    ("'token_embd.weight': .*run past the end", ("token_embd.weight", 4, "Q", 1 << 40)),
    ("'token_embd.weight': dimension 0", ("token_embd.weight", 4, "Q", 0)),
    ("'token_embd.weight': unknown tensor type", ("token_embd.weight", 20, "I", 1000)),
    ("'token_embd.weight': .*data offset 1099511627776", ("token_embd.weight", 24, "Q", 1 << 40)),
    ("version", ("", 4, "I", 7)),
]


@pytest.mark.parametrize("field,where", CASES, ids=[f"{c[0][:24]}-{c[1][3]}" for c in CASES])
def test_a_count_that_cannot_fit_names_file_and_field(good, field, where):
    bad = patched(good, *where)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError, match=rf"bad.gguf: .*{field}"):
            load_gguf(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20  # nothing sized by the hostile count was allocated


def test_the_good_file_passes(good):
    read_layout(good)


def test_truncated_and_foreign_files(good, tmp_path):
    data = good.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 20])
    with pytest.raises(GGUFError, match=r"cut.gguf: tensor 'token_embd.weight'.*past the end"):
        load_gguf(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:40])
    with pytest.raises(GGUFError, match=r"head.gguf: metadata"):
        load_gguf(tmp_path / "head.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match=r"empty.gguf: magic"):
        load_gguf(tmp_path / "empty.gguf")
    (tmp_path / "st.gguf").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(GGUFError, match=r"st.gguf: magic: not a GGUF file"):
        load_gguf(tmp_path / "st.gguf")


@pytest.mark.parametrize("meta,field", [
    ({"tokenizer.ggml.eos_token_id": 7}, "eos_token_id' = 7 is not a token id below 3"),
    ({"tokenizer.ggml.bos_token_id": -1}, "bos_token_id' = -1"),
    ({"tokenizer.ggml.token_type": [1]}, "token_type' does not list one type"),
    ({"tokenizer.ggml.tokens": []}, "tokens' is not a non-empty list"),
    ({"tokenizer.ggml.merges": ["a b c"]}, "merges' is not a list"),
    ({"tokenizer.chat_template": 5}, "chat_template' is not a string"),
])
def test_tokenizer_fields_are_checked(meta, field):
    base = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"]}
    gguf_tokenizer(base, "m.gguf")  # the unchanged metadata builds
    with pytest.raises(CheckpointError, match=rf"m.gguf: metadata field .*{field}"):
        gguf_tokenizer({**base, **meta}, "m.gguf")


def test_a_bad_string_in_a_token_list_names_the_field(good):
    """The token list is read in one fast loop (``_Cursor.strings``): bad UTF-8 in a token and a
    file cut inside the list are named as one string's are."""
    data = bytearray(good.read_bytes())
    at = data.find(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4 + 8 + 8 + 1 + 8
    data[at] = 0xFF  # the second token's one byte ("b") becomes invalid UTF-8
    bad = good.with_name("bad.gguf")
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"bad.gguf: metadata field 'tokenizer.ggml.tokens': "
                                        r"not valid UTF-8"):
        read_layout(bad)
    cut = data.find(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4 + 8 + 25
    bad.write_bytes(bytes(good.read_bytes()[:cut]))
    with pytest.raises(GGUFError, match=r"bad.gguf: metadata field 'tokenizer.ggml.tokens': "
                                        r"the file ends inside it"):
        read_layout(bad)

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scratchlm.data.pretrain import GPTDataset, ShardDataset, create_dataloader
from scratchlm.data.shards import DataFileError, prepare, read_blocks


def test_book_sliding_window(verdict_text):
    dl = create_dataloader(verdict_text, batch_size=1, max_length=4, stride=1, shuffle=False)
    it = iter(dl)
    x1, y1 = next(it)
    x2, _ = next(it)
    assert x1.tolist() == [[40, 367, 2885, 1464]] and y1.tolist() == [[367, 2885, 1464, 1807]]
    assert x2.tolist() == [[367, 2885, 1464, 1807]]
    dl = create_dataloader(verdict_text, batch_size=8, max_length=4, stride=4, shuffle=False)
    x, y = next(iter(dl))
    assert x.shape == y.shape == (8, 4)
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1:, 0], y[:-1, -1])  # no overlap
    assert len(dl.dataset) == (5145 - 4 + 3) // 4  # the book's starts: range(0, n - 4, 4)


def test_dataset_needs_enough_tokens(gpt2_tok):
    with pytest.raises(ValueError, match="max_length"):
        GPTDataset("too short", gpt2_tok, max_length=32, stride=32)


def test_blocks_tokenize_like_the_whole_file(tmp_path, gpt2_tok):
    from scratchlm.downloads.sources import fetch

    text = fetch("tinyshakespeare").read_text(encoding="utf-8")[:120_000]
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    blocks = [b for b, _ in read_blocks(f, block_size=4096)]
    assert len(blocks) > 20 and "".join(blocks) == text
    assert sum((gpt2_tok.encode(b) for b in blocks), []) == gpt2_tok.encode(text)


def test_shard_round_trip(tmp_path, gpt2_tok, verdict_text):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(verdict_text, encoding="utf-8")
    b.write_text("Hello, world\n" * 100, encoding="utf-8")
    meta = prepare([a, b], tmp_path / "out", shard_tokens=2000, workers=2, progress=False)
    expected = gpt2_tok.encode(verdict_text) + [50256] + gpt2_tok.encode("Hello, world\n" * 100) + [50256]
    assert meta["num_tokens"] == len(expected) and meta["dtype"] == "uint16"
    assert [s["num_tokens"] for s in meta["shards"]][:-1] == [2000] * (len(meta["shards"]) - 1)
    got = np.concatenate([np.fromfile(tmp_path / "out" / s["file"], dtype=np.uint16)
                          for s in meta["shards"]])
    assert got.tolist() == expected
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == json.loads(json.dumps(meta))
    assert not list((tmp_path / "out").glob("*.part"))

    ds = ShardDataset(tmp_path / "out", max_length=16)
    x, y = ds[0]
    assert x.tolist() == expected[:16] and y.tolist() == expected[1:17]
    x, y = ds[len(ds) - 1]  # windows stay inside a shard
    assert x.shape == (16,) and torch.equal(x[1:], y[:-1])
    assert len(ds) == sum((s["num_tokens"] - 17) // 16 + 1 for s in meta["shards"])


def test_bad_input_is_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataFileError, match="empty.txt: file is empty"):
        prepare([empty], tmp_path / "o1", progress=False, workers=1)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text\n" * 10 + b"\xff\xfe oops")
    with pytest.raises(DataFileError, match=r"bad.txt:11: not UTF-8 text \(byte 0xff at column 1"):
        prepare([bad], tmp_path / "o2", progress=False, workers=1)
    with pytest.raises(DataFileError, match=r"bad.txt:11: not UTF-8 text"):  # in a later block
        list(read_blocks(bad, block_size=30))
    with pytest.raises(DataFileError, match="no such file"):
        prepare([tmp_path / "nope.txt"], tmp_path / "o3", progress=False, workers=1)


def test_prepare_with_pure_python_tokenizer_uses_processes(tmp_path, verdict_text):
    from scratchlm.tokenizers import BPETokenizer

    tok = BPETokenizer.train(verdict_text, 400, progress=False)
    tok.save(tmp_path / "tok.json")
    src = tmp_path / "v.txt"
    src.write_text(verdict_text * 3, encoding="utf-8")
    meta = prepare([src], tmp_path / "out", tokenizer=str(tmp_path / "tok.json"), workers=2,
                   progress=False)
    got = np.fromfile(tmp_path / "out" / meta["shards"][0]["file"], dtype=np.uint16)
    assert got.tolist() == tok.encode(verdict_text * 3) + [tok.eos_id]

"""Corpora in the formats data is published in: every format gives the ids of the same text
read from .txt files, documents keep their boundaries, bad input names the file, the line (or
row) and the field, and mixtures are deterministic."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from scratchlm.data.documents import file_documents, mix_documents, resolve_source
from scratchlm.data.pretrain import corpus_datasets
from scratchlm.data.shards import prepare
from scratchlm.data.text_file import DataFileError

DOCS = [f"Document {i}. " + "It was a quiet afternoon, naïve café.\n" * (i % 7) + "End."
        for i in range(40)]


def _jsonl(docs, field="text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def write_formats(folder, docs=DOCS) -> dict[str, object]:
    """The same documents as .jsonl, .jsonl.gz, .jsonl.zst, .json (an array) and .parquet
    (several row groups), and as one .txt file each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in [("c.jsonl", _jsonl(docs)), ("c.jsonl.gz", gzip.compress(_jsonl(docs))),
                       ("c.jsonl.zst", zstandard.ZstdCompressor().compress(_jsonl(docs))),
                       ("c.json", json.dumps([{"text": d} for d in docs]).encode())]:
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}),
                   folder / "c.parquet", row_group_size=7)
    paths["c.parquet"] = folder / "c.parquet"
    txt = folder / "txt"
    txt.mkdir()
    for i, d in enumerate(docs):
        (txt / f"{i:03d}.txt").write_text(d, encoding="utf-8")
    paths["txt"] = txt
    return paths


def _ids(folder):
    meta = json.loads((folder / "meta.json").read_text())
    ids = np.concatenate([np.fromfile(folder / s["file"], dtype=meta["dtype"])
                          for s in meta["shards"]])
    return ids, np.fromfile(folder / "docs.bin", dtype=np.uint64), meta


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.json",
                                  "c.parquet"])
def test_every_format_gives_the_ids_of_the_same_text_files(tmp_path, name, gpt2_tok):
    paths = write_formats(tmp_path / "in")
    prepare([str(paths["txt"])], tmp_path / "txt", shard_tokens=500, workers=2, progress=False)
    want, want_starts, _ = _ids(tmp_path / "txt")
    meta = prepare([str(paths[name])], tmp_path / "out", shard_tokens=500, workers=2,
                   progress=False)
    got, starts, _ = _ids(tmp_path / "out")
    assert got.tolist() == want.tolist()
    assert starts.tolist() == want_starts.tolist()
    assert meta["num_documents"] == len(DOCS) and len(meta["shards"]) > 2
    # the boundaries are the documents: each ends with end-of-text
    assert all(got[int(s) - 1] == gpt2_tok.eos_id for s in starts[1:])
    # read in memory (no shards), the same ids
    corpus = corpus_datasets([str(paths[name])], 0.0, gpt2_tok, 16)
    assert corpus.train.stream.read(0, len(got)).tolist() == got.tolist()


def test_special_token_text_in_a_document_stays_text(tmp_path, gpt2_tok):
    (tmp_path / "c.jsonl").write_bytes(_jsonl(["a <|endoftext|> b"]))
    prepare([str(tmp_path / "c.jsonl")], tmp_path / "out", workers=1, progress=False)
    ids, _, _ = _ids(tmp_path / "out")
    assert ids.tolist() == gpt2_tok.encode_ordinary("a <|endoftext|> b") + [gpt2_tok.eos_id]
    assert ids.tolist().count(gpt2_tok.eos_id) == 1


def test_folders_globs_and_the_text_field(tmp_path):
    paths = write_formats(tmp_path / "in")
    (tmp_path / "in" / "other.jsonl").write_bytes(_jsonl(["x"], field="content"))
    got = [d.text for d in file_documents(tmp_path / "in" / "other.jsonl", "content")]
    assert got == ["x"]
    assert len(resolve_source(str(tmp_path / "in" / "*.parquet")).files) == 1
    folder = resolve_source(str(paths["txt"]))
    assert [p.name for p in folder.files][:2] == ["000.txt", "001.txt"]


BAD_CASES = [
    ("missing.jsonl", b'{"text": "a"}\n{"body": "b"}\n', r"missing.jsonl:2: no field 'text'"),
    ("number.jsonl", b'{"text": "a"}\n\n{"text": 5}\n', r"number.jsonl:3: field 'text' is int"),
    ("broken.jsonl", b'{"text": "a"}\n{"text": "b\n', r"broken.jsonl:2: not valid JSON"),
    ("bytes.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', r"bytes.jsonl:2: not UTF-8 text"),
    ("array.jsonl", b'{"text": "a"}\n[1, 2]\n', r"array.jsonl:2: a JSON object expected"),
]


@pytest.mark.parametrize("name,data,message", BAD_CASES)
def test_bad_json_lines_name_the_file_line_and_field(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataFileError, match=message):
        list(file_documents(tmp_path / name))


@pytest.mark.parametrize("suffix,compress", [(".zst", zstandard.ZstdCompressor().compress),
                                             (".gz", gzip.compress)])
def test_a_truncated_stream_is_named_and_what_was_written_stays(tmp_path, suffix, compress):
    data = compress(_jsonl(DOCS * 50))
    path = tmp_path / f"c.jsonl{suffix}"
    path.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DataFileError, match=rf"c.jsonl{suffix}: the compressed stream is "
                                            r"truncated"):
        list(file_documents(path))
    with pytest.raises(DataFileError):
        prepare([str(path)], tmp_path / "out", shard_tokens=1000, workers=1, progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()  # no shard folder claims to be whole
    assert (tmp_path / "out" / "shard_00000.bin").is_file()  # shards already done are kept


def test_parquet_errors_name_the_file_and_the_column_or_row_group(tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "nocol.parquet")
    with pytest.raises(DataFileError, match=r"nocol.parquet: no column 'text' \(columns: "
                                            r"body\)"):
        list(file_documents(tmp_path / "nocol.parquet"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(DataFileError, match=r"ints.parquet: column 'text' holds int64"):
        list(file_documents(tmp_path / "ints.parquet"))
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "null.parquet")
    with pytest.raises(DataFileError, match=r"null.parquet: row 1: column 'text' is null"):
        list(file_documents(tmp_path / "null.parquet"))
    pq.write_table(pa.table({"text": DOCS * 20}), tmp_path / "bad.parquet", row_group_size=100,
                   compression="zstd")
    raw = bytearray((tmp_path / "bad.parquet").read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64  # damage a row group's pages
    (tmp_path / "bad.parquet").write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match=r"bad.parquet: row group \d+ \(rows from \d+\) is "
                                            r"corrupt"):
        list(file_documents(tmp_path / "bad.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataFileError, match=r"junk.parquet: not a readable parquet file"):
        list(file_documents(tmp_path / "junk.parquet"))


def test_mixtures_are_deterministic_weighted_and_deduplicated(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(_jsonl([f"a{i}" for i in range(300)]))
    b.write_bytes(_jsonl([f"b{i}" for i in range(300)] + ["a0"]))
    sources = [resolve_source(f"{a}:3"), resolve_source(f"{b}:1")]
    first = [d.text for d in mix_documents(sources, seed=1)]
    assert first == [d.text for d in mix_documents(sources, seed=1)]
    assert first != [d.text for d in mix_documents(sources, seed=2)]
    assert sorted(first) == sorted([f"a{i}" for i in range(300)] + [f"b{i}" for i in range(300)]
                                   + ["a0"])
    head = first[:200]  # drawn 3:1 while both last
    assert 130 < sum(t.startswith("a") for t in head) < 175
    assert len([d for d in mix_documents(sources, seed=1, dedup=True)]) == 600
    with pytest.raises(ValueError, match="weight must be a positive number"):
        resolve_source(f"{a}:0")


def test_a_yaml_mixture_is_the_same_as_its_data_weight_specs(tmp_path, gpt2_tok):
    """A mixture file lists sources and weights (paths relative to the file); it reads as the
    same specs given on the command line, and prepare and the pretraining loader take it."""
    from scratchlm.data.mixtures import expand_mixtures
    from scratchlm.data.shards import prepare

    (tmp_path / "in").mkdir()
    a, b = tmp_path / "in" / "a.jsonl", tmp_path / "in" / "b.jsonl"
    a.write_bytes(_jsonl([f"a{i}" for i in range(50)]))
    b.write_bytes(_jsonl([f"b{i}" for i in range(50)]))
    mix = tmp_path / "mix.yaml"
    mix.write_text("sources:\n  - data: in/a.jsonl\n    weight: 3\n  - data: in/b.jsonl\n")
    assert expand_mixtures([str(mix), "the-verdict"]) == [f"{a}:3.0", str(b), "the-verdict"]
    by_yaml = [d.text for d in mix_documents([resolve_source(s) for s in
                                              expand_mixtures([str(mix)])], seed=4)]
    by_flags = [d.text for d in mix_documents([resolve_source(f"{a}:3"), resolve_source(str(b))],
                                              seed=4)]
    assert by_yaml == by_flags and by_yaml != sorted(by_yaml)
    meta = prepare([str(mix)], tmp_path / "shards", tokenizer="gpt2", progress=False)
    assert meta["num_documents"] == 100 and meta["files"] == [str(a), str(b)]
    corpus = corpus_datasets([str(mix)], 0.1, gpt2_tok, 4)
    assert len(corpus.train.stream.doc_starts) == 100 and "10 whole documents" in corpus.split


@pytest.mark.parametrize("text,message", [
    ("- a.jsonl\n", "a mapping with one key, 'sources'"),
    ("sources: []\n", "a mapping with one key, 'sources'"),
    ("sources:\n  - data: a.jsonl\n    wieght: 2\n", "source 1: an entry is"),
    ("sources:\n  - data: a.jsonl\n    weight: -1\n", "source 1: weight must be a positive"),
    ("sources:\n  - data: a.jsonl\n  - data: other.yaml\n", "source 2: a mixture cannot"),
    ("sources: [\n", "not valid YAML"),
])
def test_a_bad_mixture_file_is_named(tmp_path, text, message):
    from scratchlm.data.mixtures import expand_mixtures

    mix = tmp_path / "mix.yaml"
    mix.write_text(text)
    with pytest.raises(DataFileError, match=message) as e:
        expand_mixtures([str(mix)])
    assert str(mix) in str(e.value)


def test_validation_holds_out_whole_documents(tmp_path, gpt2_tok):
    paths = write_formats(tmp_path / "in")
    corpus = corpus_datasets([str(paths["c.parquet"])], 0.1, gpt2_tok, 16)
    stream, cut = corpus.train.stream, corpus.val.lo
    assert cut in stream.doc_starts.tolist() and "whole documents" in corpus.split
    assert 0.05 <= 1 - cut / len(stream) <= 0.2
    # one document only (the book's the-verdict): the book's split of the token stream
    one = corpus_datasets([str(paths["txt"] / "005.txt")], 0.1, gpt2_tok, 8)
    assert "tail of the token stream" in one.split
    # a named validation file
    named = corpus_datasets([str(paths["c.jsonl"])], 0.1, gpt2_tok, 16,
                            val_data=[str(paths["txt"] / "005.txt")])
    assert "005.txt" in named.split and named.val.lo == 0


def test_reading_flags_are_refused_for_a_shard_folder(tmp_path, gpt2_tok):
    paths = write_formats(tmp_path / "in")
    prepare([str(paths["c.jsonl"])], tmp_path / "shards", workers=1, progress=False)
    for kw in (dict(dedup=True), dict(text_field="body")):
        with pytest.raises(ValueError, match="holds token shards: --dedup and --text_field"):
            corpus_datasets([str(tmp_path / "shards")], 0.1, gpt2_tok, 16, **kw)


def test_hostile_json_lines_are_named_not_crashes(tmp_path, monkeypatch):
    import scratchlm.data.documents as documents

    deep = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    (tmp_path / "deep.jsonl").write_bytes(b'{"text": "a"}\n' + deep)
    with pytest.raises(DataFileError, match=r"deep.jsonl:2: JSON nested too deeply"):
        list(file_documents(tmp_path / "deep.jsonl"))
    monkeypatch.setattr(documents, "MAX_LINE", 1000)
    monkeypatch.setattr(documents, "CHUNK", 256)
    (tmp_path / "long.jsonl").write_bytes(b'{"text": "a"}\n' + b'{"text": "' + b"x" * 5000)
    with pytest.raises(DataFileError, match=r"long.jsonl:2: a line longer than"):
        list(file_documents(tmp_path / "long.jsonl"))


def test_a_text_field_for_text_files_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="--text_field 'body' names a field"):
        prepare([str(tmp_path / "a.txt")], tmp_path / "out", text_field="body", workers=1,
                progress=False)


def test_in_a_mixture_only_text_files_read_special_strings(tmp_path, gpt2_tok):
    """A text file is read as the book reads it, a JSON document as plain text, also when
    both are mixed (each document is encoded by its own rule)."""
    (tmp_path / "a.txt").write_text("x <|endoftext|> y")
    (tmp_path / "b.jsonl").write_bytes(_jsonl(["p <|endoftext|> q"]))
    prepare([f"{tmp_path / 'a.txt'}:1", f"{tmp_path / 'b.jsonl'}:1"], tmp_path / "out",
            workers=1, progress=False)
    ids, starts, _ = _ids(tmp_path / "out")
    eot = gpt2_tok.eos_id
    docs = np.split(ids, starts[1:].astype(np.int64))
    by_text = {gpt2_tok.decode(d.tolist()): d.tolist().count(eot) for d in docs}
    assert by_text == {"x <|endoftext|> y<|endoftext|>": 2, "p <|endoftext|> q<|endoftext|>": 1}

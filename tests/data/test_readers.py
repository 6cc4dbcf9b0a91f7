"""Every reader of user data names the file and the line of what it cannot use: text that is
not UTF-8 (classification tables, SMS spam, instruction / DPO / reward files, CoNLL, evaluation
tasks, pretraining text), an unclosed CSV quote, a null label, a row with extra fields, a file
with only a header, data with a single class."""

from __future__ import annotations

import json

import pytest

from scratchlm.data.classification import (ClassificationDataError, classification_splits,
                                           read_sms_spam, read_table)
from scratchlm.data.conll import read_conll
from scratchlm.data.instruction import read_examples
from scratchlm.data.text_file import DataFileError, read_text
from scratchlm.evaluate.choice import TaskError, read_task

BAD = b"\xff\xfe"  # never valid UTF-8


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_read_text_names_line_and_column_and_drops_a_bom(tmp_path):
    p = _write(tmp_path / "t.txt", [b"one", b"two", b"thr" + BAD + b"ee"])
    with pytest.raises(DataFileError, match=r"t.txt:3: not UTF-8 text \(byte 0xff at column 4"):
        read_text(p)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfa,b\n")
    assert read_text(tmp_path / "bom.txt") == "a,b\n"


@pytest.mark.parametrize("name,lines,read", [
    ("c.csv", [b"label,text", b"ham,hi", b"spam,b" + BAD], read_table),
    ("c.jsonl", [b'{"label": "a", "text": "x"}', b'{"label": "b", "text": "y"}',
                 b'{"label": "a", "text": "' + BAD + b'"}'], read_table),
    ("SMSSpamCollection", [b"ham\thi", b"spam\tyo", b"ham\t" + BAD], read_sms_spam),
    ("i.jsonl", [b'{"instruction": "a", "output": "b"}', b"", b'{"instruction": "' + BAD
                 + b'", "output": "b"}'], read_examples),
    ("dpo.json", [b'[{"instruction": "a", "chosen": "b",', b' "rejected": "c"},',
                  b' {"instruction": "' + BAD + b'", "chosen": "b", "rejected": "c"}]'],
     read_examples),
    ("t.conll", [b"John\tB-PER", b"", b"Par" + BAD + b"\tB-LOC"], read_conll),
    ("task.jsonl", [b'{"context": "a", "choices": ["b", "c"], "label": 0}', b"",
                    b'{"context": "' + BAD + b'", "choices": ["b", "c"], "label": 0}'],
     read_task),
])
def test_invalid_utf8_names_file_and_line(tmp_path, name, lines, read):
    with pytest.raises(ValueError, match=rf"{name}:3: not UTF-8 text"):
        read(_write(tmp_path / name, lines))


def test_pretraining_text_names_the_line(tmp_path, gpt2_tok):
    from scratchlm.data.pretrain import text_datasets

    p = _write(tmp_path / "corpus.txt", [b"hello world"] * 4 + [BAD])
    with pytest.raises(DataFileError, match=r"corpus.txt:5: not UTF-8 text"):
        text_datasets([str(p)], 0.1, gpt2_tok, 8)


def test_an_unclosed_quote_is_an_error_at_its_line(tmp_path):
    p = _write(tmp_path / "q.csv", [b"label,text", b"ham,fine", b'spam,"never closed',
                                    b"ham,swallowed", b"spam,also swallowed"])
    with pytest.raises(ClassificationDataError, match=r"q.csv:3: .*never closed"):
        read_table(p)


def test_a_quoted_newline_is_still_one_field(tmp_path):
    p = _write(tmp_path / "ok.csv", [b"label,text", b'ham,"two', b'lines"', b"spam,x"])
    assert read_table(p) == [("ham", "two\nlines"), ("spam", "x")]


@pytest.mark.parametrize("name,lines,message", [
    ("n.jsonl", [b'{"label": "a", "text": "x"}', b'{"label": null, "text": "y"}'],
     r"n.jsonl:2: 'label' is null"),
    ("m.jsonl", [b'{"label": "a", "text": "x"}', b'{"text": "y"}'], r"m.jsonl:2: 'label' is missing"),
    ("x.csv", [b"label,text", b"ham,hi", b"spam,hello, world"], r"x.csv:3: 3 fields, the header has 2"),
    ("f.csv", [b"label,text", b"ham"], r"f.csv:2: 1 fields, the header has 2"),
    ("e.csv", [b"label,text", b",hi"], r"e.csv:2: the label is empty"),
    ("h.csv", [b"label,text"], r"h.csv: no rows after the header"),
    ("c.csv", [b"name,body", b"a,b"], r"c.csv:1: missing column\(s\) \['label', 'text'\]"),
    ("z.jsonl", [b""], r"z.jsonl: no rows"),
])
def test_bad_rows_are_named(tmp_path, name, lines, message):
    with pytest.raises(ClassificationDataError, match=message):
        read_table(_write(tmp_path / name, lines))


def test_single_class_data_is_refused(tmp_path):
    p = _write(tmp_path / "one.csv", [b"label,text"] + [b"ham,msg %d" % i for i in range(20)])
    with pytest.raises(ClassificationDataError, match=r"one.csv: every row has the label 'ham'"):
        classification_splits(str(p))


def test_tsv_tables_split_on_tabs(tmp_path):
    p = _write(tmp_path / "t.tsv", [b"label\ttext", b"ham\thello, world", b"spam\tbuy"])
    assert read_table(p) == [("ham", "hello, world"), ("spam", "buy")]


def test_a_bad_task_label_still_names_the_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 5}) + "\n")
    with pytest.raises(TaskError, match=r"t.jsonl:1: "):
        read_task(p)

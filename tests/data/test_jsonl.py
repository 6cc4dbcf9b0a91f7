"""JSON Lines: values with their line numbers, blank lines skipped, a bad line named."""

from __future__ import annotations

import pytest

from scratchlm.data.classification import ClassificationDataError
from scratchlm.data.jsonl import json_lines


def test_values_come_with_their_line_numbers():
    text = '{"a": 1}\n\n   \n[2]\n"x"'
    assert list(json_lines("f.jsonl", text)) == [(1, {"a": 1}), (4, [2]), (5, "x")]


def test_a_bad_line_is_the_given_error_naming_file_and_line():
    lines = json_lines("f.jsonl", '{"a": 1}\n\n{oops', ClassificationDataError)
    assert next(lines) == (1, {"a": 1})
    with pytest.raises(ClassificationDataError, match=r"^f.jsonl:3: not valid JSON \(Expecting"):
        next(lines)

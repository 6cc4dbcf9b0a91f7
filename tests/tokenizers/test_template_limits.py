"""A chat template is code from outside (a GGUF file's metadata): it runs in Jinja's sandbox
with limits on what it builds, what it outputs and how long it runs, and its errors name its
source."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from scratchlm.tokenizers import chat, get_tokenizer
from scratchlm.tokenizers.chat import TemplateError, encode_chat, render_chat

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("template", [
    "{{ 'a' * 3000000000 }}",
    "{{ 3000000000 * 'ab' }}",
    "{% set x = ['a'] * 100000000 %}{{ x | length }}",
    "{{ 10 ** 100000000 }}",
    "{{ 1000 ** 1000 ** 1000 ** 1000 }}",  # Jinja's ** is left-associative
])
def test_a_template_cannot_build_a_huge_value(template):
    tracemalloc.start()
    with pytest.raises(TemplateError, match="limit"):
        render_chat(template, MESSAGES)
    assert tracemalloc.get_traced_memory()[1] < 50e6
    tracemalloc.stop()


def test_a_template_cannot_run_forever(monkeypatch):
    monkeypatch.setattr(chat, "MAX_SECONDS", 0.5)
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match="took over 0.5 s"):
        render_chat("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                    "{% endfor %}", MESSAGES)
    assert time.perf_counter() - t0 < 3


def test_a_template_cannot_output_without_bound(monkeypatch):
    monkeypatch.setattr(chat, "MAX_CHARS", 100_000)
    with pytest.raises(TemplateError, match="output is over"):
        render_chat("{% for i in range(100000) %}{{ 'abcdefgh' }}{% endfor %}", MESSAGES)


def test_template_errors_name_the_file(tiny_chat_model):
    folder = tiny_chat_model(context_length=64)
    tok = get_tokenizer(str(folder))
    tok.chat_template = "{{ 'a' * 3000000000 }}"
    with pytest.raises(TemplateError, match="tokenizer_config.json"):
        encode_chat(tok, MESSAGES)
    tok.chat_template = "{{ messages[0].nope.deeper }}"
    with pytest.raises(TemplateError, match="tokenizer_config.json: UndefinedError"):
        encode_chat(tok, MESSAGES)


def test_ordinary_templates_render_as_before(tiny_chat_model):
    tok = get_tokenizer(str(tiny_chat_model(context_length=64)))
    text = render_chat(tok.chat_template, MESSAGES, bos_token="", eos_token="")
    assert "hi" in text and "<|im_start|>user" in text


@pytest.mark.parametrize("template", [
    "{% set ns = namespace(x='a') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}"
    "{% endfor %}{{ ns.x | length }}",  # doubling by ~ in a loop
    "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x + ns.x %}"
    "{% endfor %}{{ ns.x | length }}",
    "{{ ([('x' * 1000)] * 100000) | join }}",  # a list of long strings, repeated
    "{{ 'x'.ljust(10000000000) }}",
    "{{ 'x' | center(10000000000) }}",
    "{% set ns = namespace(x=2 ** 1000) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
    "{% endfor %}{{ ns.x > 0 }}",
])
def test_values_built_inside_a_template_are_bounded(template):
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match="limit"):
        render_chat(template, MESSAGES)
    assert tracemalloc.get_traced_memory()[1] < 100e6 and time.perf_counter() - t0 < 10
    tracemalloc.stop()

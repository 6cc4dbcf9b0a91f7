"""Chat formatting: render a conversation with the model's own Jinja chat template (as
Hugging Face and llama.cpp do), and encode it.

Templates run in Jinja's sandbox; ``raise_exception`` is provided as templates expect. A
template is code from outside (a GGUF file's metadata), so it also runs within limits: a string
or list it multiplies may not outgrow ``MAX_CHARS``, nor may its output, and it may not run for
more than ``MAX_SECONDS``, nor hold a value larger than ``MAX_CHARS`` in a variable (both
checked on every line of the compiled template, by a trace function in the rendering thread);
a size argument (``ljust``, ``center``, ``indent``) is bounded too. ``TemplateError`` names the
template's source (the file).

The template's own special tokens (``<|im_start|>``) are control tokens; the messages' contents
are the user's text, so a ``<|im_start|>system`` typed into a message stays ordinary text and
cannot forge a turn. ``render_chat_spans`` finds where the contents lie in the rendered prompt
(by rendering once more with a unique marker in place of each content) and
``tokenizers.base.encode_protected`` keeps special tokens out of those spans.
"""

from __future__ import annotations

import functools
import secrets
import sys
import time
from functools import lru_cache

from scratchlm.tokenizers.base import encode_protected


# ChatML (SmolLM2's and Qwen's turns), the template a tokenizer trained here gets with --chat
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

MAX_CHARS = 16_000_000  # a rendered prompt, or a string a template builds (4x the body limit)
MAX_SECONDS = 5.0  # one rendering
MAX_POWER = 1024  # the largest exponent of a template's `**`


class TemplateError(ValueError):
    """A chat template failed or went over its limits; the message names where it came from."""


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Limited(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                _check_product(left, right)
            elif isinstance(right, (int, float)) and (
                    abs(right) > MAX_POWER or isinstance(left, int)
                    and left.bit_length() * abs(right) > MAX_POWER * 64):
                raise SecurityError(f"a power {left} ** {right} is over the limit")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
            _check_sizes(args, kwargs)  # "x".ljust(10**10)
            return super().call(__context, __obj, *args, **kwargs)

    env = Limited(trim_blocks=True, lstrip_blocks=True)
    # filters are called directly by the compiled template, not through ``call``
    env.filters = {name: _bounded(f) for name, f in env.filters.items()}

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def _size(value) -> int:
    """Characters a string holds, items (and their characters) a list holds; 0 for others."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value) + sum(len(v) for v in value[:1024] if isinstance(v, str)) * max(
            1, len(value) // 1024)
    return 0


def _check_product(left, right) -> None:
    """``left * right`` would not outgrow ``MAX_CHARS`` (a string or list repeated) or 64 K
    bits (two integers)."""
    from jinja2.exceptions import SecurityError

    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_POWER * 64:
            raise SecurityError("a product of two integers is over the limit")
        return
    n, seq = (left, right) if isinstance(left, int) else (right, left)
    if isinstance(n, int) and n * _size(seq) > MAX_CHARS:
        raise SecurityError(f"a repetition of {n} x {_size(seq):,} characters is over the "
                            f"limit of {MAX_CHARS:,}")


def _check_sizes(args, kwargs) -> None:
    """No integer argument (a width, a count) over ``MAX_CHARS``."""
    from jinja2.exceptions import SecurityError

    sizes = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    if any(abs(a) > MAX_CHARS for a in sizes):
        raise SecurityError(f"an argument of {max(sizes, key=abs)} is over the limit of "
                            f"{MAX_CHARS:,}")


def _bounded(fn):
    """A filter whose integer arguments are checked first (``|center(10**10)``); Jinja's
    markers on it (pass_context, ...) are kept."""
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        _check_sizes(args, kwargs)
        return fn(*args, **kwargs)

    return checked


def _held_too_much(frame) -> bool:
    """Whether a variable of a template's frame (a string, a list, a namespace's values) holds
    more than ``MAX_CHARS``: what ``~`` or ``+`` in a loop builds between two lines."""
    for value in frame.f_locals.values():
        attrs = getattr(value, "_Namespace__attrs", None)  # Jinja's namespace() keeps a dict
        values = (attrs if isinstance(attrs, dict) else value if isinstance(value, dict)
                  else {0: value}).values()
        try:
            if any(_size(v) > MAX_CHARS for v in values):
                return True
        except TypeError:
            continue
    return False


def _render_limited(template, variables: dict) -> str:
    """The template's output, stopped with a ``TemplateError`` past ``MAX_CHARS`` characters or
    ``MAX_SECONDS`` seconds. Jinja compiles a template to Python code (file "<template>"): a
    trace function set for this thread only watches those frames' lines."""
    deadline = time.monotonic() + MAX_SECONDS

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateError(f"rendering took over {MAX_SECONDS:g} s")
        if _held_too_much(frame):
            raise TemplateError(f"a value it builds is over the limit of {MAX_CHARS:,} "
                                "characters")
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    pieces = template.generate(**variables)
    try:
        parts, size = [], 0
        for piece in pieces:
            size += len(piece)
            if size > MAX_CHARS:
                raise TemplateError(f"its output is over the limit of {MAX_CHARS:,} characters")
            parts.append(piece)
        return "".join(parts)
    finally:
        pieces.close()  # its frames, traced, let go now
        sys.settrace(previous)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                source: str = "the chat template", **special) -> str:
    """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...]). ``source``
    names the template in errors (its file)."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} needs 'role' and 'content': {m!r}")
    try:
        return _render_limited(_compile(template), dict(
            messages=messages, add_generation_prompt=add_generation_prompt, **special))
    except TemplateError as e:
        raise TemplateError(f"{source}: {e}") from None
    except ValueError as e:  # raise_exception: the template refused the conversation
        raise ValueError(f"{source}: {e}") from None
    except Exception as e:  # noqa: BLE001 (a template raises whatever its code does)
        raise TemplateError(f"{source}: {type(e).__name__}: {e}") from None


def render_chat_spans(template: str, messages: list[dict], add_generation_prompt: bool = True,
                      source: str = "the chat template",
                      **special) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text for ``messages`` and the [start, end) spans of it that are message
    content (user text)."""
    text = render_chat(template, messages, add_generation_prompt, source, **special)
    contents = [m["content"] for m in messages]
    if not any(isinstance(c, str) and c for c in contents):
        return text, []
    tag = secrets.token_hex(8)
    marks = [f"\ue000{tag}{i}\ue001" for i in range(len(messages))]
    marked = render_chat(template, [dict(m, content=mark) for m, mark in zip(messages, marks)],
                         add_generation_prompt, source, **special)
    rebuilt, spans, pos = [], [], 0
    for piece in _split_marks(marked, tag):
        if isinstance(piece, int):
            c = str(contents[piece])
            spans.append((pos, pos + len(c)))
            rebuilt.append(c)
            pos += len(c)
        else:
            rebuilt.append(piece)
            pos += len(piece)
    if "".join(rebuilt) == text:
        return text, spans
    # the template changed the contents (e.g. trimmed them): every place a content (or its
    # trimmed form) appears in the real text is user text
    return text, spans_of(text, {str(c) for c in contents} | {str(c).strip() for c in contents})


def spans_of(text: str, contents) -> list[tuple[int, int]]:
    """The [start, end) spans of every place a (non-empty) content string appears in ``text``."""
    spans = []
    for c in {c for c in contents if c}:
        at = text.find(c)
        while at >= 0:
            spans.append((at, at + len(c)))
            at = text.find(c, at + 1)
    return spans


def _split_marks(marked: str, tag: str):
    import re

    for i, piece in enumerate(re.split(f"\ue000{tag}(\\d+)\ue001", marked)):
        if i % 2:
            yield int(piece)
        elif piece:
            yield piece


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> list[int]:
    """Token ids of the rendered conversation: the template's special tokens are control
    tokens, special-token strings inside message contents are ordinary text. ``tools``: the
    template's ``tools`` variable (``tokenizers/tool_calls.with_tools`` prepares it)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("this tokenizer has no chat template")
    source = getattr(tokenizer, "template_source", None) or "the chat template"
    extra = template_tokens(tokenizer)
    if tools:
        extra["tools"] = tools
    text, spans = render_chat_spans(template, messages, add_generation_prompt, source, **extra)
    return encode_protected(tokenizer, text, spans)


def template_tokens(tokenizer) -> dict[str, str]:
    """The variables templates expect besides the messages (``bos_token``, ``eos_token``)."""
    return dict(bos_token=getattr(tokenizer, "bos_token", "") or "",
                eos_token=getattr(tokenizer, "eos_token", "") or "")

"""Chat formatting: render a conversation with the model's own Jinja chat template (as
Hugging Face and llama.cpp do), and encode it.

Templates run in Jinja's sandbox; ``raise_exception`` is provided as templates expect.

The template's own special tokens (``<|im_start|>``) are control tokens; the messages' contents
are the user's text, so a ``<|im_start|>system`` typed into a message stays ordinary text and
cannot forge a turn. ``render_chat_spans`` finds where the contents lie in the rendered prompt
(by rendering once more with a unique marker in place of each content) and
``tokenizers.base.encode_protected`` keeps special tokens out of those spans.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from scratchlm.tokenizers.base import encode_protected


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                **special) -> str:
    """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...])."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} needs 'role' and 'content': {m!r}")
    return _compile(template).render(messages=messages,
                                     add_generation_prompt=add_generation_prompt, **special)


def render_chat_spans(template: str, messages: list[dict], add_generation_prompt: bool = True,
                      **special) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text for ``messages`` and the [start, end) spans of it that are message
    content (user text)."""
    text = render_chat(template, messages, add_generation_prompt, **special)
    contents = [m["content"] for m in messages]
    if not any(isinstance(c, str) and c for c in contents):
        return text, []
    tag = secrets.token_hex(8)
    marks = [f"\ue000{tag}{i}\ue001" for i in range(len(messages))]
    marked = render_chat(template, [dict(m, content=mark) for m, mark in zip(messages, marks)],
                         add_generation_prompt, **special)
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


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered conversation: the template's special tokens are control
    tokens, special-token strings inside message contents are ordinary text."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("this tokenizer has no chat template")
    text, spans = render_chat_spans(template, messages, add_generation_prompt,
                                    **template_tokens(tokenizer))
    return encode_protected(tokenizer, text, spans)


def template_tokens(tokenizer) -> dict[str, str]:
    """The variables templates expect besides the messages (``bos_token``, ``eos_token``)."""
    return dict(bos_token=getattr(tokenizer, "bos_token", "") or "",
                eos_token=getattr(tokenizer, "eos_token", "") or "")

"""Chat formatting: render a conversation with the model's own Jinja chat template (as
Hugging Face and llama.cpp do), and encode it.

Templates run in Jinja's sandbox; ``raise_exception`` is provided as templates expect.
"""

from __future__ import annotations

from functools import lru_cache


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


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered conversation (special tokens in the template are allowed)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("this tokenizer has no chat template")
    text = render_chat(template, messages, add_generation_prompt,
                       bos_token=getattr(tokenizer, "bos_token", "") or "",
                       eos_token=getattr(tokenizer, "eos_token", "") or "")
    return tokenizer.encode(text, allowed_special="all")

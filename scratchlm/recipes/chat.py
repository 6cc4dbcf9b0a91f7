"""``scratchlm chat``: a terminal chat with a model's own chat template, streaming replies.

Type a message; ``/reset`` clears the conversation, ``/quit`` (or end of input) leaves. Works
with piped input too: ``printf 'Hi\\n/quit\\n' | scratchlm chat``.
"""

from __future__ import annotations

import sys
from typing import TextIO

from scratchlm.generation.engine import Engine, SamplingParams, stream_text
from scratchlm.tokenizers.chat import encode_chat
from scratchlm.recipes.configs import ChatConfig  # noqa: F401 (its config)


def reply(engine: Engine, tokenizer, messages: list[dict], params: SamplingParams):
    """Stream the assistant's next message for ``messages``."""
    ids = encode_chat(tokenizer, messages, add_generation_prompt=True)
    stops = [tokenizer.eos_token] if getattr(tokenizer, "eos_token", None) else []
    return stream_text(engine, tokenizer, ids, params, stop_strings=stops)


def main(cfg: ChatConfig, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    from scratchlm.checkpoints.generation_config import sampling_defaults
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.models.placement import placement

    device, dtype = placement(cfg.device, cfg.dtype)
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype, device, quantize=cfg.quantize)
    engine = Engine(model)
    stop_ids = tuple(i for i in (tokenizer.eos_id,) if i is not None)
    temperature, top_k, top_p = sampling_defaults(cfg.model).resolve(cfg.temperature, cfg.top_k,
                                                                     cfg.top_p)
    params = SamplingParams(cfg.max_new_tokens, temperature, top_k, top_p, stop_ids, cfg.seed)
    base = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(base)
    interactive = stdin.isatty()
    if interactive:
        stdout.write(f"chatting with {cfg.model}; /reset clears, /quit leaves\n")
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            messages = list(base)
            stdout.write("(conversation cleared)\n")
            continue
        messages.append({"role": "user", "content": text})
        answer = []
        for piece in reply(engine, tokenizer, messages, params):
            answer.append(piece)
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(answer)})

"""An Ollama ``Modelfile`` next to an exported GGUF: the file, the chat template in Ollama's
Go-template form, the stop tokens and default sampling parameters.

    ollama create NAME -f Modelfile && ollama run NAME

Ollama renders prompts with Go templates, not Jinja, so the template here is written from the
chat format the tokenizer's Jinja template uses (ChatML ``<|im_start|>`` for SmolLM2 and
Qwen3, Gemma's ``<start_of_turn>``, Gemma 4's ``<|turn>``, Llama 3's header tokens); a model
with no chat template gets a plain completion template.
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.export.atomic import replace_file, staging

_CHATML = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
           '{{ end }}<|im_start|>assistant\n')
_GEMMA = ('{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model'
          '{{ else }}{{ .Role }}{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}'
          '<start_of_turn>model\n')
# Gemma 4: the published template with thinking off ends the prompt with an empty thought
_GEMMA4 = ('{{- range .Messages }}<|turn>{{ if eq .Role "assistant" }}model'
           '{{ else }}{{ .Role }}{{ end }}\n{{ .Content }}<turn|>\n{{ end }}'
           '<|turn>model\n<|channel>thought\n<channel|>')
_LLAMA3 = ('{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
           '{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n')
# (marker in the Jinja template, Go template, stop strings)
_FORMATS = [("<|im_start|>", _CHATML, ["<|im_end|>"]),
            ("<start_of_turn>", _GEMMA, ["<end_of_turn>"]),
            ("<|turn>", _GEMMA4, ["<turn|>"]),
            ("<|start_header_id|>", _LLAMA3, ["<|eot_id|>"])]


def modelfile(gguf_name: str, chat_template: str | None, eos_token: str | None,
              temperature: float = 0.7, top_k: int = 40, context_length: int = 2048,
              adapter: str | None = None) -> str:
    """The text of a Modelfile for ``gguf_name`` (a path relative to the Modelfile), with a
    LoRA ``adapter`` file (relative too) applied to it when given."""
    template, stops = '{{ .Prompt }}', []
    for marker, go, stop in _FORMATS:
        if chat_template and marker in chat_template:
            template, stops = go, list(stop)
            break
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    lines = [f"FROM {_relative(gguf_name)}"]
    if adapter:
        lines.append(f"ADAPTER {_relative(adapter)}")
    lines.append(f'TEMPLATE """{template}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {temperature}", f"PARAMETER top_k {top_k}",
              f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"


def _relative(path: str) -> str:
    return path if path.startswith(("./", "../", "/")) else f"./{path}"


def write_modelfile(gguf_path: Path, tokenizer, context_length: int,
                    base: str | None = None) -> Path:
    """``NAME.Modelfile`` beside ``NAME.gguf``; returns its path. With ``base`` (the base
    model's GGUF, relative to the Modelfile's folder) ``NAME.gguf`` is a LoRA adapter file:
    the Modelfile is FROM the base with ``ADAPTER ./NAME.gguf``."""
    from scratchlm.export.vocab import gguf_vocab

    vocab = gguf_vocab(tokenizer)
    eos = vocab.tokens[vocab.eos_id] if vocab.eos_id is not None else None
    return save_modelfile(gguf_path, vocab.chat_template, eos, context_length, base)


def save_modelfile(gguf_path: Path, chat_template: str | None, eos_token: str | None,
                   context_length: int, base: str | None = None) -> Path:
    """``write_modelfile`` from the chat template and EOS token themselves (a GGUF file's
    metadata holds them; no tokenizer needed); ``num_ctx`` is at most 8192."""
    path = gguf_path.with_suffix(".Modelfile")
    with staging(path) as part:  # whole or not at all, as the GGUF beside it
        part.write_text(modelfile(base or gguf_path.name, chat_template, eos_token,
                                  context_length=min(context_length, 8192),
                                  adapter=gguf_path.name if base else None))
        replace_file(part, path)
    return path

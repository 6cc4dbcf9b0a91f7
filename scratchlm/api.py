"""The Python API: a loaded model with its tokenizer, ready to generate and chat.

    from scratchlm import LLM
    llm = LLM.load("smollm2-135m-instruct")
    llm.generate("The capital of France is", max_new_tokens=10)
    llm.chat([{"role": "user", "content": "What is the capital of France?"}])

It is composed of the functions the CLI uses (``load_model_and_tokenizer``, ``load_adapter``,
``Engine``, ``stream_text``, ``encode_chat``); the server wraps the same object.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path


class LLM:
    def __init__(self, model, tokenizer, name: str = "model", defaults=None,
                 prefill: str = "fp32"):
        from scratchlm.generation.engine import Engine
        from scratchlm.checkpoints.generation_config import GREEDY

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.engine = Engine(model, prefill=prefill)
        # how the model asks to be sampled when a call says nothing (checkpoints/generation_config.py)
        self.defaults = defaults or GREEDY

    @classmethod
    def load(cls, name: str = "smollm2-135m-instruct", adapter: str | Path | None = None,
             quantize: str | None = "auto", device: str = "cpu", dtype: str = "fp32",
             prefill: str = "fp32", adapters: dict[str, str | Path] | None = None) -> "LLM":
        """A preset (``smollm2-135m-instruct``, ``gpt2-124m``, ...), a GGUF file or a model folder
        (e.g. a finetuning run's ``final/``), optionally with a LoRA adapter folder on top;
        ``device`` (cpu | cuda | cuda:N) and ``dtype`` (fp32 | bf16 | fp16) say where it runs;
        ``prefill`` (fp32 | bf16 | auto) the precision of prompt processing (see ``Engine``);
        ``quantize``: None (or "none"), int8, gguf, gguf-a8 or auto (a GGUF file's own blocks on
        the CPU in fp32, with 8-bit activations where the kernel has them, unless an adapter
        needs float weights; ``checkpoints/load.auto_quantize``).
        ``adapters``: NAME -> folder, LoRA adapters kept apart over the one base, each batch row
        running its own (``finetune/adapter_bank.py``; the base is active between batches)."""
        from scratchlm.checkpoints.load import load_model_and_tokenizer
        from scratchlm.models.placement import placement

        dev, dt = placement(device, dtype)
        if quantize == "auto" and (adapter is not None or adapters):
            quantize = None  # a LoRA adapter is applied to float weights
        model, tok = load_model_and_tokenizer(name, dt, dev, quantize=quantize)
        if adapter is not None:
            from scratchlm.finetune.lora import load_adapter

            load_adapter(model, adapter)
        label = Path(str(name)).name if Path(str(name)).exists() else str(name)
        if adapters:
            from scratchlm.finetune.adapter_bank import add_named_adapter, set_adapter

            for key, folder in adapters.items():
                if key == label:
                    raise ValueError(f"adapter {key!r}: the base model is named so; give the "
                                     "adapter another name")
                add_named_adapter(model, key, folder)  # one for another base: a ValueError
            set_adapter(model, None)
        from scratchlm.checkpoints.generation_config import sampling_defaults

        # the engine (made last) sees the adapters: its C decoder runs no LoRA
        return cls(model.eval(), tok, label, sampling_defaults(name), prefill)

    @property
    def context_length(self) -> int:
        return self.engine.max_len

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.tokenizer.eos_id,) if i is not None)

    def sampling(self, max_new_tokens: int = 128, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None):
        """Sampling settings: what is given, the model's defaults for the rest
        (``self.defaults``; greedy when the model names none)."""
        from scratchlm.generation.engine import SamplingParams

        temperature, top_k, top_p = self.defaults.resolve(temperature, top_k, top_p)
        return SamplingParams(max_new_tokens, temperature, top_k, top_p, self.stop_ids, seed)

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Ids of a raw prompt. ``special``: special-token strings in it are control tokens (a
        prompt written by the program); False: ordinary text (a prompt from a user, as the
        server's /v1/completions takes it). Chat messages are always user text (``chat_ids``)."""
        if special:
            return self.tokenizer.encode(text, allowed_special="all")
        from scratchlm.tokenizers.base import encode_ordinary

        return encode_ordinary(self.tokenizer, text)

    def chat_ids(self, messages: Sequence[dict], tools: list[dict] | None = None) -> list[int]:
        """The prompt of a conversation; with ``tools`` (OpenAI's function list), shown as the
        model's template shows them (``tokenizers/tool_calls.py``)."""
        from scratchlm.tokenizers.chat import encode_chat

        if tools is None and not any(m.get("role") == "tool" or m.get("tool_calls")
                                     for m in messages):
            return encode_chat(self.tokenizer, list(messages), add_generation_prompt=True)
        from scratchlm.tokenizers.tool_calls import with_tools

        messages, variable = with_tools(list(messages), tools or [],
                                        getattr(self.tokenizer, "chat_template", None))
        return encode_chat(self.tokenizer, messages, add_generation_prompt=True, tools=variable)

    def chat_stops(self) -> list[str]:
        eos = getattr(self.tokenizer, "eos_token", None)
        return [eos] if eos else []

    def stream(self, prompt: str, stop: Sequence[str] = (), **sampling) -> Iterator[str]:
        from scratchlm.generation.engine import stream_text

        return stream_text(self.engine, self.tokenizer, self.encode(prompt),
                           self.sampling(**sampling), stop)

    def generate(self, prompt: str, stop: Sequence[str] = (), **sampling) -> str:
        """The continuation of ``prompt``, sampled as the model asks unless told otherwise
        (``self.defaults``: greedy for most models)."""
        return "".join(self.stream(prompt, stop, **sampling))

    def stream_chat(self, messages: Sequence[dict], **sampling) -> Iterator[str]:
        from scratchlm.generation.engine import stream_text

        return stream_text(self.engine, self.tokenizer, self.chat_ids(messages),
                           self.sampling(**sampling), self.chat_stops())

    def chat(self, messages: Sequence[dict], **sampling) -> str:
        """The assistant's reply to ``messages`` (rendered with the model's chat template)."""
        return "".join(self.stream_chat(messages, **sampling))

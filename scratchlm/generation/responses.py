"""Greedy responses to instruction examples, batched through the engine: the book's test-set
response extraction (chapter 7), used by the instruction and preference recipes."""

from __future__ import annotations

from tqdm.auto import tqdm

from scratchlm.data.instruction import render_prompt
from scratchlm.generation.engine import Engine, SamplingParams


def generate_responses(model, tokenizer, examples, style: str, max_new_tokens: int = 256,
                       batch_size: int = 8, progress: bool = True) -> list[str]:
    """Greedy answers to each example's prompt, batched through the engine, ending at
    end-of-text."""
    engine = Engine(model)
    stop = tuple(i for i in (tokenizer.eos_id,) if i is not None)
    prompts = [render_prompt(e, tokenizer, style) for e in examples]
    out: list[str] = []
    was_training = model.training
    bar = tqdm(total=len(prompts), desc="responses", unit="ex", disable=not progress)
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        room = engine.max_len - max(map(len, chunk))
        params = SamplingParams(max_new_tokens=max(1, min(max_new_tokens, room)), stop_ids=stop)
        out += [tokenizer.decode(ids).strip() for ids in engine.generate(chunk, params)]
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return out

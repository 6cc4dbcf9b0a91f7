"""``scratchlm generate``: continue a prompt (or answer it through the chat template), streamed
to stdout; with ``--best-of N --reward-model RUN`` the best of N samples by a reward model.

    scratchlm generate --model runs/verdict/final --prompt "Every effort moves you" \\
        --max-new-tokens 50 --temperature 1.4 --top-k 25 --seed 123
"""

from __future__ import annotations

import sys

from scratchlm.generation.engine import Engine, SamplingParams, stream_text
from scratchlm.recipes.configs import GenerateConfig  # noqa: F401 (its config)


def main(cfg: GenerateConfig) -> str:
    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.tokenizers import get_tokenizer

    if not cfg.model:
        raise ValueError("--model is required (a preset with weights, a model folder or a "
                         ".gguf file)")
    from scratchlm.models.placement import placement

    device, dtype = placement(cfg.device, cfg.dtype)
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype, device, quantize=cfg.quantize)
    if cfg.tokenizer:
        tokenizer = get_tokenizer(cfg.tokenizer)
    from scratchlm.checkpoints.generation_config import sampling_defaults

    temperature, top_k, top_p = sampling_defaults(cfg.model).resolve(cfg.temperature, cfg.top_k,
                                                                     cfg.top_p)
    params = SamplingParams(cfg.max_new_tokens, temperature, top_k, top_p,
                            tuple(i for i in (tokenizer.eos_id,) if i is not None), cfg.seed)
    if cfg.chat:  # the prompt as a user turn of the model's chat template
        from scratchlm.tokenizers.chat import encode_chat

        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat needs a tokenizer with a chat template")
        ids = encode_chat(tokenizer, [{"role": "user", "content": cfg.prompt}],
                          add_generation_prompt=True)
    else:
        ids = tokenizer.encode(cfg.prompt, allowed_special="all")
    if cfg.best_of > 1 or cfg.reward_model:
        return best_of(cfg, model, tokenizer, ids, params)
    text = "" if cfg.chat else cfg.prompt
    sys.stdout.write(text)
    for piece in stream_text(Engine(model), tokenizer, ids, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
        text += piece
    sys.stdout.write("\n")
    return text


def best_of(cfg: GenerateConfig, model, tokenizer, ids, params) -> str:
    from scratchlm.finetune.reward import RewardScorer
    from scratchlm.generation.best_of import best_of_n

    if not cfg.reward_model:
        raise ValueError("--best-of needs --reward-model RUN (a `finetune reward` final/ folder)")
    scorer = RewardScorer.load(cfg.reward_model)
    ranked = best_of_n(Engine(model), tokenizer, ids, params, cfg.best_of,
                       lambda texts: scorer(cfg.prompt, texts))
    for i, c in enumerate(ranked):
        print(f"[{i + 1}/{len(ranked)}] reward {c.score:+.3f}: {c.text!r}", file=sys.stderr)
    text = ranked[0].text if cfg.chat else cfg.prompt + ranked[0].text
    print(text)
    return text

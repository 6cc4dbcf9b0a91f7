"""The ``scratchlm`` command: one subcommand per job, each a thin call into a recipe.

The recipes come from ``recipes/registry.py``; a recipe's flags mirror its config dataclass
and are built only for the command being run, so ``scratchlm --help`` imports no torch."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from scratchlm.recipes.demo import DemoConfig, main

    stages = args.stages.split(",") if args.stages else None
    cfg = DemoConfig(out=args.out, fast=args.fast, **({"stages": stages} if stages else {}))
    main(cfg)
    return 0


def _prepare(args) -> int:
    from scratchlm.data.shards import prepare

    meta = prepare(args.data, args.out, tokenizer=args.tokenizer, shard_tokens=args.shard_tokens,
                   workers=args.workers)
    print(f"{meta['num_tokens']:,} tokens in {len(meta['shards'])} shard(s) ({meta['dtype']}) "
          f"-> {args.out}")
    return 0


def _train_tokenizer(args) -> int:
    from pathlib import Path

    from scratchlm.tokenizers import BPETokenizer

    text = "".join(Path(f).read_text(encoding="utf-8") for f in args.data)
    tok = BPETokenizer.train(text, args.vocab_size)
    tok.save(args.out)
    print(f"{len(tok.merges):,} merges, vocab {tok.vocab_size:,} -> {args.out}")
    return 0


def _generate(args) -> int:
    from scratchlm.generation.engine import Engine, SamplingParams, stream_text
    from scratchlm.models.loading import load_model_and_tokenizer
    from scratchlm.tokenizers import get_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model, quantize=args.quantize)
    if args.tokenizer:
        tokenizer = get_tokenizer(args.tokenizer)
    params = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                            tuple(i for i in (tokenizer.eos_id,) if i is not None), args.seed)
    if args.chat:  # the prompt as a user turn of the model's chat template
        from scratchlm.tokenizers.chat import encode_chat

        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat needs a tokenizer with a chat template")
        ids = encode_chat(tokenizer, [{"role": "user", "content": args.prompt}],
                          add_generation_prompt=True)
    else:
        ids = tokenizer.encode(args.prompt, allowed_special="all")
    if args.best_of > 1 or args.reward_model:
        return _best_of(args, model, tokenizer, ids, params)
    sys.stdout.write("" if args.chat else args.prompt)
    for piece in stream_text(Engine(model), tokenizer, ids, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _best_of(args, model, tokenizer, ids, params) -> int:
    from scratchlm.finetune.reward import RewardScorer
    from scratchlm.generation.best_of import best_of_n
    from scratchlm.generation.engine import Engine

    if not args.reward_model:
        raise ValueError("--best-of needs --reward-model RUN (a `finetune reward` final/ folder)")
    scorer = RewardScorer.load(args.reward_model)
    ranked = best_of_n(Engine(model), tokenizer, ids, params, args.best_of,
                       lambda texts: scorer(args.prompt, texts))
    for i, c in enumerate(ranked):
        print(f"[{i + 1}/{len(ranked)}] reward {c.score:+.3f}: {c.text!r}", file=sys.stderr)
    print(ranked[0].text if args.chat else args.prompt + ranked[0].text)
    return 0


def _chat(args) -> int:
    from scratchlm.recipes.chat import ChatConfig, main

    main(ChatConfig(args.model, args.system, args.max_new_tokens, args.temperature, args.top_k,
                    args.top_p, args.seed, args.quantize))
    return 0


def _pretrain(args) -> int:
    from scratchlm.config import build
    from scratchlm.recipes.pretrain import PretrainConfig, main

    cfg = build(PretrainConfig, args, args.config)
    if args.resume is not None:
        cfg.resume = args.resume
    result = main(cfg)
    return 130 if result.interrupted else 0






def _plan(args) -> int:
    from scratchlm.recipes.plan import main

    main(args.model, args.json, method=args.method, batch=args.batch, context=args.context,
         dtype=args.dtype, optimizer=args.optimizer, lora_rank=args.lora_rank,
         lora_targets=tuple(args.lora_targets), tokens=int(args.tokens),
         peak_tflops=args.peak_tflops, mfu=args.mfu, gpu_memory_gib=args.gpu_memory,
         grad_checkpointing=args.grad_checkpointing)
    return 0



def _tune(args) -> int:
    from scratchlm.recipes.tune import run_study

    res = run_study(args.recipe, args.trials, args.space, args.out, args.config, args.set,
                    args.seed, study_name=args.study_name)
    if res["best"] is None:
        print("no trial completed (all pruned or failed)")
        return 1
    print(f"best: trial {res['best']} val loss {res['value']:.4f} {res['params']} -> "
          f"{args.out}/best-config.json")
    return 0


def _evaluate_judge(args) -> int:
    from scratchlm.recipes.judge import JudgeConfig, main

    result = main(JudgeConfig(args.responses, args.out, args.api, args.judge_model, args.url,
                              args.api_key, args.concurrency, args.timeout, args.retries))
    return 0 if result["scored"] else 1


def _serve(args) -> int:
    from scratchlm.serve.app import ServeConfig, main

    main(ServeConfig(args.model, args.adapter, args.host, args.port, args.api_key,
                     args.max_tokens_cap, args.max_batch, args.quantize))
    return 0


def _run_recipe(recipe, args) -> int:
    from scratchlm.config import build

    config_cls, main = recipe.load()
    main(build(config_cls, args, args.config))
    return 0


def _add_recipe(sub, recipe, with_flags: bool) -> None:
    """A subcommand whose flags mirror the recipe's config dataclass (nested ones as
    --train.lr) and that runs its ``main(config)``; the flags (which import the recipe, and so
    torch) only when ``with_flags``: the command being run or asked for --help."""
    import functools

    from scratchlm.config import add_arguments

    d = sub.add_parser(recipe.name, help=recipe.help, description=f"{recipe.help}. Flags mirror "
                       f"{recipe.config}; nested ones as --train.lr or --lora.rank.")
    if not with_flags:
        return
    d.add_argument("--config", default=None, help="a YAML/JSON file of config values")
    if recipe.command == "pretrain":
        d.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="continue from the latest checkpoint in --out (or the one given)")
        add_arguments(d, recipe.config_class(), skip=frozenset({"resume"}))
        d.set_defaults(func=_pretrain)
        return
    add_arguments(d, recipe.config_class())
    d.set_defaults(func=functools.partial(_run_recipe, recipe))


def _selected(argv: list[str]) -> str | None:
    """The recipe command named by ``argv`` (its first one or two words), if any."""
    from scratchlm.recipes.registry import RECIPES

    words = [a for a in argv if not a.startswith("-")][:2]
    for command in RECIPES:
        parts = command.split()
        if words[:len(parts)] == parts:
            return command
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; recipe flags are built for the recipe ``argv`` names (all of them when
    ``argv`` is None, e.g. for documentation)."""
    from scratchlm.recipes.registry import RECIPES

    selected = _selected(argv) if argv is not None else None
    p = argparse.ArgumentParser(prog="scratchlm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole lifecycle on embedded defaults")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--stages", default=None, help="comma-separated stages to run (default: all)")
    d.add_argument("--fast", action="store_true", help="tiny settings (CI smoke test)")
    d.set_defaults(func=_demo)

    d = sub.add_parser("prepare", help="tokenize text files into memory-mapped token shards")
    d.add_argument("--data", nargs="+", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--tokenizer", default="gpt2")
    d.add_argument("--shard-tokens", type=int, default=100_000_000)
    d.add_argument("--workers", type=int, default=None)
    d.set_defaults(func=_prepare)

    ft = sub.add_parser("finetune", help="finetune a pretrained model").add_subparsers(
        dest="method", required=True)
    for command, recipe in RECIPES.items():
        group = ft if command.startswith("finetune ") else sub
        _add_recipe(group, recipe, argv is None or command == selected)

    ev = sub.add_parser("evaluate", help="evaluate model outputs").add_subparsers(
        dest="method", required=True)
    d = ev.add_parser("judge", help="score responses 0-100 with a judge model over HTTP")
    d.add_argument("responses", help="a test-with-responses.json (instruction/prompt, "
                                     "reference or output, model_response)")
    d.add_argument("--out", default=None, help="default: <responses>-scores.json")
    d.add_argument("--api", choices=["ollama", "openai"], default="ollama")
    d.add_argument("--judge-model", default=None, help="default: llama3 (ollama), gpt-4o-mini")
    d.add_argument("--url", default=None, help="default: http://127.0.0.1:11434 (ollama), "
                                               "OPENAI_BASE_URL (openai)")
    d.add_argument("--api-key", default=None, help="default: OPENAI_API_KEY")
    d.add_argument("--concurrency", type=int, default=4)
    d.add_argument("--timeout", type=float, default=120.0)
    d.add_argument("--retries", type=int, default=3)
    d.set_defaults(func=_evaluate_judge)

    d = sub.add_parser("generate", help="continue a prompt with a model")
    d.add_argument("--model", required=True, help="a preset with weights or a model folder")
    d.add_argument("--prompt", default="Every effort moves you")
    d.add_argument("--max-new-tokens", type=int, default=50)
    d.add_argument("--temperature", type=float, default=0.0)
    d.add_argument("--top-k", type=int, default=None)
    d.add_argument("--top-p", type=float, default=None)
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--tokenizer", default=None, help="default: the model folder's, else gpt2")
    d.add_argument("--quantize", choices=["int8"], default=None, help="int8 weights")
    d.add_argument("--chat", action="store_true",
                   help="send the prompt as a user turn of the model's chat template")
    d.add_argument("--best-of", type=int, default=1,
                   help="sample N answers, print the one the reward model rates best")
    d.add_argument("--reward-model", default=None, help="a `finetune reward` final/ folder")
    d.set_defaults(func=_generate)

    d = sub.add_parser("chat", help="chat with a model in the terminal (streaming)")
    d.add_argument("--model", default="smollm2-135m-instruct")
    d.add_argument("--system", default=None, help="a system prompt")
    d.add_argument("--max-new-tokens", type=int, default=256)
    d.add_argument("--temperature", type=float, default=0.0)
    d.add_argument("--top-k", type=int, default=None)
    d.add_argument("--top-p", type=float, default=None)
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--quantize", choices=["int8"], default=None, help="int8 weights")
    d.set_defaults(func=_chat)

    d = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with a web chat page")
    d.add_argument("--model", default="smollm2-135m-instruct", help="a preset or a run folder")
    d.add_argument("--adapter", default=None, help="a LoRA adapter folder to apply")
    d.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--api-key", default=None, help="require this key (default: SCRATCHLM_API_KEY)")
    d.add_argument("--max-tokens-cap", type=int, default=1024)
    d.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    d.add_argument("--quantize", choices=["int8"], default=None, help="int8 weights")
    d.set_defaults(func=_serve)

    d = sub.add_parser("tune", help="hyperparameter search over a recipe (Optuna, resumable)")
    from scratchlm.recipes.registry import tunable

    d.add_argument("--recipe", required=True, choices=sorted(tunable()))
    d.add_argument("--trials", type=int, default=20, help="total trials in the study")
    d.add_argument("--space", required=True,
                   help='e.g. "lr=1e-5:1e-3:log,batch_size=4:16:int,schedule=cosine|constant"')
    d.add_argument("--config", default=None, help="the base config file of the recipe")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="base config values, e.g. train.max_steps=200")
    d.add_argument("--out", default="runs/tune")
    d.add_argument("--seed", type=int, default=123)
    d.add_argument("--study-name", default=None)
    d.set_defaults(func=_tune)

    d = sub.add_parser("plan", help="memory, FLOPs, time and Chinchilla tokens of a run")
    d.add_argument("--model", default="gpt2-124m", help="a GPT/Llama preset or a config file")
    d.add_argument("--method", choices=["full", "lora", "qlora", "qlora-dq"], default="full")
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--context", type=int, default=None, help="default: the model's")
    d.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    d.add_argument("--optimizer", choices=["adamw", "adamw8bit", "sgd"], default="adamw")
    d.add_argument("--lora-rank", type=int, default=16)
    d.add_argument("--lora-targets", nargs="+", default=["all"])
    d.add_argument("--tokens", type=float, default=0, help="training tokens planned")
    d.add_argument("--peak-tflops", type=float, default=None, help="e.g. 989 for an H100 (bf16)")
    d.add_argument("--mfu", type=float, default=0.4)
    d.add_argument("--gpu-memory", type=float, default=None, help="GiB available")
    d.add_argument("--grad-checkpointing", action="store_true")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_plan)

    d = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer from scratch")
    d.add_argument("--data", nargs="+", required=True)
    d.add_argument("--vocab-size", type=int, default=4096)
    d.add_argument("--out", required=True)
    d.set_defaults(func=_train_tokenizer)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        # Known failure modes (bad input, missing files, downloads) end with one clear line.
        print(f"scratchlm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

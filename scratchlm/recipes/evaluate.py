"""``scratchlm evaluate run`` and ``scratchlm evaluate compare``: standard benchmarks for a
model, written as a report card into the run, and two report cards side by side.

    scratchlm evaluate run --model runs/sft/final --tasks gsm8k bpb:tinyshakespeare \\
        choice:arc_easy_test.jsonl:arc --limit 200
    scratchlm evaluate compare runs/base/eval runs/sft/eval

Tasks (``scratchlm/evaluate/``): ``bpb:TEXT`` bits per byte and perplexity of a data set
name or text file (``lm.py``); ``choice:FILE[:LAYOUT]`` multiple choice by log-likelihood,
``acc`` and ``acc_norm`` (``choice.py``); ``gsm8k`` the GSM8K test set graded by its final
number (``gsm8k.py``). Results go to RESULTS.json / RESULTS.md in ``--out`` (default: the
run's ``eval/``); per-example rows are cached, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scratchlm.recipes.configs import CompareConfig, EvaluateConfig  # noqa: F401 (its config)


def _out_folder(cfg: EvaluateConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    model = Path(cfg.model)
    if model.is_dir() and model.name == "final":
        return model.parent / "eval"
    return Path("eval")


def _text(spec: str, limit: int | None) -> str:
    from scratchlm.data.sources import SOURCES, fetch

    path = fetch(spec, progress=False) if spec in SOURCES else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"bpb:{spec}: not a data set name ({', '.join(SOURCES)}) or "
                                "a text file")
    text = path.read_text(encoding="utf-8")
    return text[:limit] if limit else text


def run_task(task: str, model, tok, cfg: EvaluateConfig, out: Path) -> dict:
    """One task's metrics (with per-example rows for choice and gsm8k)."""
    from scratchlm.evaluate.report import ResultCache

    kind, _, rest = task.partition(":")
    if kind == "bpb":
        from scratchlm.evaluate.lm import score_text

        if not rest:
            raise ValueError("bpb needs a text: bpb:tinyshakespeare or bpb:FILE")
        return score_text(model, tok, _text(rest, cfg.limit), cfg.lm.max_length,
                          cfg.lm.stride).to_dict()
    if kind == "choice":
        from scratchlm.evaluate.choice import evaluate_choices, read_task

        path, _, layout = rest.partition(":")
        if not path:
            raise ValueError("choice needs a task file: choice:FILE[:LAYOUT]")
        examples = read_task(path, layout or "jsonl")[: cfg.limit]
        pool = read_task(cfg.choice.shot_file, layout or "jsonl") if cfg.choice.shot_file \
            else examples
        cache = ResultCache(out, task, {"limit": cfg.limit, **dataclasses.asdict(cfg.choice)})
        return evaluate_choices(model, tok, examples, cfg.choice.shots, pool, cfg.choice.seed,
                                done=cache.done, on_result=cache.add)
    if kind == "gsm8k":
        from scratchlm.evaluate.gsm8k import evaluate_gsm8k, load_gsm8k

        g = cfg.gsm8k
        problems = load_gsm8k("test", cfg.limit)
        pool = load_gsm8k("train") if g.mode == "fewshot" else None
        cache = ResultCache(out, task, {"limit": cfg.limit, **dataclasses.asdict(g)})
        return evaluate_gsm8k(model, tok, problems, g.mode, g.shots, pool, g.samples,
                              g.temperature, g.max_new_tokens, g.batch_size,
                              done=cache.done, on_result=cache.add)
    raise ValueError(f"unknown task {task!r}: gsm8k, bpb:TEXT or choice:FILE[:LAYOUT]")


def main(cfg: EvaluateConfig) -> dict:
    from scratchlm.evaluate.report import summary, write_results
    from scratchlm.models.loading import load_model_and_tokenizer

    if not cfg.model:
        raise ValueError("--model is required")
    if not cfg.tasks:
        raise ValueError("--tasks is empty")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {cfg.limit}")
    for task in cfg.tasks:  # refuse a misspelt task before loading anything
        if task.partition(":")[0] not in ("bpb", "choice", "gsm8k"):
            raise ValueError(f"unknown task {task!r}: gsm8k, bpb:TEXT or choice:FILE[:LAYOUT]")
    out = _out_folder(cfg)
    model, tok = load_model_and_tokenizer(cfg.model, quantize=cfg.quantize)
    if cfg.adapter:
        from scratchlm.finetune.lora import load_adapter, merge_lora

        merge_lora(load_adapter(model, cfg.adapter))
    results = {}
    for task in cfg.tasks:
        results[task] = run_task(task, model, tok, cfg, out)
        print(f"{task}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in summary(results[task]).items()))
    path = write_results(out, cfg.model, results)
    print(f"results -> {path} and {path.with_suffix('.md')}")
    return results


def compare(cfg: CompareConfig) -> str:
    from scratchlm.evaluate.report import compare as table
    from scratchlm.evaluate.report import load_results

    if len(cfg.runs) != 2:
        raise ValueError(f"evaluate compare needs two results folders, got {len(cfg.runs)}")
    text = table(load_results(cfg.runs[0]), load_results(cfg.runs[1]))
    print(text, end="")
    return text

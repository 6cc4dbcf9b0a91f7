"""``scratchlm evaluate run`` and ``scratchlm evaluate compare``: standard benchmarks for a
model, written as a report card into the run, and two report cards side by side.

    scratchlm evaluate run --model runs/sft/final --tasks gsm8k bpb:tinyshakespeare \\
        choice:arc_easy_test.jsonl:arc --limit 200
    scratchlm evaluate compare runs/base/eval runs/sft/eval

Tasks (``scratchlm/evaluate/``): ``bpb:TEXT`` bits per byte and perplexity of a data set
name or text file (``lm.py``); ``choice:FILE[:LAYOUT]`` multiple choice by log-likelihood,
``acc`` and ``acc_norm`` (``choice.py``); ``gsm8k`` the GSM8K test set graded by its final
number (``gsm8k.py``). Results go to RESULTS.json / RESULTS.md in ``--out`` (default: the
run's ``eval/``); per-example rows are cached, so an interrupted evaluation resumes (only
under the same model, settings and task file contents: ``evaluate/cache.py``).
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.recipes.configs import CompareConfig, EvaluateConfig  # noqa: F401 (its config)


def _out_folder(cfg: EvaluateConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    model = Path(cfg.model)
    if model.is_dir() and model.name == "final":
        return model.parent / "eval"
    return Path("eval")


def main(cfg: EvaluateConfig) -> dict:
    from scratchlm.evaluate.cache import model_identity
    from scratchlm.evaluate.tasks import check_tasks, run_tasks
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    if not cfg.model:
        raise ValueError("--model is required")
    check_tasks(cfg.tasks, cfg.limit)  # a misspelt task fails before anything loads
    model, tok = load_model_and_tokenizer(cfg.model, quantize=cfg.quantize)
    if cfg.adapter:
        from scratchlm.finetune.lora import load_adapter, merge_lora

        merge_lora(load_adapter(model, cfg.adapter))
    # what the cached rows are keyed by: the weights as loaded, the adapter and quantization too
    identity = model_identity(cfg.model, cfg.adapter, cfg.quantize)
    return run_tasks(model, tok, cfg.tasks, _out_folder(cfg), cfg.model, cfg.limit, identity,
                     lm=cfg.lm, choice=cfg.choice, gsm8k=cfg.gsm8k)


def compare(cfg: CompareConfig) -> str:
    from scratchlm.evaluate.report import compare as table
    from scratchlm.evaluate.report import load_results

    if len(cfg.runs) != 2:
        raise ValueError(f"evaluate compare needs two results folders, got {len(cfg.runs)}")
    text = table(load_results(cfg.runs[0]), load_results(cfg.runs[1]))
    print(text, end="")
    return text

"""Run named evaluation tasks on a model and write its report card: the one entry point that
``scratchlm evaluate run`` and the training recipes' ``--eval.tasks`` share.

    gsm8k                    GSM8K test problems, graded by their final number (gsm8k.py)
    bpb:TEXT                 bits per byte / perplexity of a data set name or file (lm.py)
    choice:FILE[:LAYOUT]     multiple choice by log-likelihood (choice.py)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scratchlm.evaluate.settings import ChoiceSettings, Gsm8kSettings, LMSettings

KINDS = ("bpb", "choice", "gsm8k")


def check_tasks(tasks: list[str], limit: int | None = None) -> None:
    """Refuse an unknown task or a bad limit before any model loads."""
    if not tasks:
        raise ValueError("no tasks given")
    for task in tasks:
        if task.partition(":")[0] not in KINDS:
            raise ValueError(f"unknown task {task!r}: gsm8k, bpb:TEXT or choice:FILE[:LAYOUT]")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")


def _text(spec: str, limit: int | None) -> str:
    from scratchlm.downloads.sources import SOURCES, fetch

    path = fetch(spec, progress=False) if spec in SOURCES else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"bpb:{spec}: not a data set name ({', '.join(SOURCES)}) or "
                                "a text file")
    from scratchlm.data.text_file import read_text

    text = read_text(path)
    return text[:limit] if limit else text


def run_task(task: str, model, tok, out: Path, limit: int | None = None,
             lm: LMSettings = LMSettings(), choice: ChoiceSettings = ChoiceSettings(),
             gsm8k: Gsm8kSettings = Gsm8kSettings(), identity: dict | None = None) -> dict:
    """One task's metrics (with per-example rows for choice and gsm8k, cached in ``out``).
    ``identity``: the model's (``cache.model_identity``), part of each cache's key, so that
    rows of one model are never reused for another; None only for a model with no name."""
    kind, _, rest = task.partition(":")
    if kind == "bpb":
        from scratchlm.evaluate.lm import score_text

        if not rest:
            raise ValueError("bpb needs a text: bpb:tinyshakespeare or bpb:FILE")
        return score_text(model, tok, _text(rest, limit), lm.max_length, lm.stride).to_dict()
    if kind == "choice":
        return _choice_task(task, rest, model, tok, out, limit, choice, identity)
    if kind == "gsm8k":
        return _gsm8k_task(task, model, tok, out, limit, gsm8k, identity)
    raise ValueError(f"unknown task {task!r}: gsm8k, bpb:TEXT or choice:FILE[:LAYOUT]")


def _choice_task(task: str, rest: str, model, tok, out: Path, limit: int | None,
                 choice: ChoiceSettings, identity: dict | None) -> dict:
    from scratchlm.evaluate.cache import ResultCache, file_sha256
    from scratchlm.evaluate.choice import evaluate_choices, read_task, row_problem

    path, _, layout = rest.partition(":")
    if not path:
        raise ValueError("choice needs a task file: choice:FILE[:LAYOUT]")
    examples = read_task(path, layout or "jsonl")[:limit]
    pool = read_task(choice.shot_file, layout or "jsonl") if choice.shot_file else examples
    # the files' contents, not their names: an edited label is another task
    files = {"file": file_sha256(path),
             "shots": file_sha256(choice.shot_file) if choice.shot_file else None}
    key = {"settings": {"limit": limit, **dataclasses.asdict(choice)}, "model": identity,
           "task": files}

    def check(i: int, row: dict) -> str | None:
        if i >= len(examples):  # the limit is in the key: no row lies past the examples
            return f"past the task's {len(examples)} examples"
        return row_problem(row, examples[i])

    cache = ResultCache(out, task, key, check)
    return evaluate_choices(model, tok, examples, choice.shots, pool, choice.seed,
                            done=cache.done, on_result=cache.add)


def _gsm8k_task(task: str, model, tok, out: Path, limit: int | None, gsm8k: Gsm8kSettings,
                identity: dict | None) -> dict:
    from scratchlm.downloads.sources import fetch
    from scratchlm.evaluate.cache import ResultCache, file_sha256
    from scratchlm.evaluate.gsm8k import evaluate_gsm8k, load_gsm8k, row_problem

    every = load_gsm8k("test")  # all of them: a cached row may be from a larger --limit
    problems = every[:limit]
    pool = load_gsm8k("train") if gsm8k.mode == "fewshot" else None
    # Problem i is the same problem under any limit, and the batch size changes no
    # answer: neither is part of the key, so a larger --limit continues a smaller one.
    settings = {k: v for k, v in dataclasses.asdict(gsm8k).items() if k != "batch_size"}
    files = {"file": file_sha256(fetch("gsm8k-test", progress=False)),
             "shots": file_sha256(fetch("gsm8k-train", progress=False)) if pool else None}
    key = {"settings": settings, "model": identity, "task": files}

    def check(i: int, row: dict) -> str | None:
        if i >= len(every):
            return f"past the test set's {len(every)} problems"
        return row_problem(row, every[i], gsm8k.samples)

    cache = ResultCache(out, task, key, check)
    return evaluate_gsm8k(model, tok, problems, gsm8k.mode, gsm8k.shots, pool,
                          gsm8k.samples, gsm8k.temperature, gsm8k.max_new_tokens,
                          gsm8k.batch_size, done=cache.done, on_result=cache.add)


def run_tasks(model, tok, tasks: list[str], out: str | Path, name: str,
              limit: int | None = None, identity: dict | None = None,
              **settings) -> dict[str, dict]:
    """Every task in turn, each line printed, then RESULTS.json / RESULTS.md in ``out``.
    ``identity``: the model's (default: ``model_identity(name)``), the caches' key."""
    from scratchlm.evaluate.cache import model_identity
    from scratchlm.evaluate.report import summary, write_results

    check_tasks(tasks, limit)
    out = Path(out)
    identity = identity or model_identity(name)
    results = {}
    for task in tasks:
        results[task] = run_task(task, model, tok, out, limit, identity=identity, **settings)
        print(f"{task}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in summary(results[task]).items()))
    path = write_results(out, name, results, identity)
    print(f"results -> {path} and {path.with_suffix('.md')}")
    return results


def check_eval(eval_cfg) -> None:
    """A training recipe's ``--eval`` settings, refused before any training starts."""
    if eval_cfg.tasks or eval_cfg.limit is not None:
        check_tasks(eval_cfg.tasks or ["gsm8k"], eval_cfg.limit)


def evaluate_final(eval_cfg, model, tok, run: str | Path, name: str) -> dict[str, dict] | None:
    """A training recipe's ``--eval.tasks`` (an ``EvalTasks``) on its final model, into
    ``RUN/eval``; nothing when no task was asked for."""
    if not eval_cfg.tasks:
        return None
    return run_tasks(model, tok, eval_cfg.tasks, Path(run) / "eval", name, eval_cfg.limit)

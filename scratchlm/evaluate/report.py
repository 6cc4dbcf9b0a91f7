"""The report card of an evaluation and what it resumes from.

    RUN/eval/RESULTS.json      {"model": ..., "identity": ..., "tasks": {task: {metric: ...}}}
    RUN/eval/RESULTS.md        the same as a markdown table
    RUN/eval/cache/TASK.jsonl  one line per finished example: an interrupted evaluation picks
                               up from here (``cache.py``)

``compare(a, b)`` lines two RESULTS.json up side by side with the deltas.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SUMMARY_KEYS = ("bpb", "ppl", "tokens", "acc", "acc_norm", "exact_match", "pass@1",
                "examples", "problems")


def summary(metrics: dict) -> dict:
    """The scalar metrics of a task result (rows dropped)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def write_results(folder: Path, model: str, results: dict[str, dict],
                  identity: dict | None = None) -> Path:
    """RESULTS.json and RESULTS.md in ``folder``, merged with the tasks already there when
    they are of the same model (``identity``, ``cache.model_identity``): another model's
    results are replaced, never shown under this model's name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "RESULTS.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    same = isinstance(old, dict) and old.get("identity") == identity and (
        identity is not None or old.get("model") == model)
    tasks = {**(old.get("tasks", {}) if same else {}),
             **{k: summary(v) for k, v in results.items()}}
    data = {"model": model, **({"identity": identity} if identity else {}), "tasks": tasks}
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    (folder / "RESULTS.md").write_text(markdown(data))
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown(data: dict) -> str:
    lines = [f"# Evaluation of {data['model']}", "", "| task | metric | value |",
             "|---|---|---|"]
    for task, metrics in data["tasks"].items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {task} | {key} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def load_results(folder: str | Path) -> dict:
    folder = Path(folder)
    for path in (folder / "RESULTS.json", folder / "eval" / "RESULTS.json"):
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"{folder}: no RESULTS.json (nor eval/RESULTS.json)")


def compare(a: dict, b: dict) -> str:
    """A markdown table of the metrics both evaluations have, with b - a."""
    lines = [f"| task | metric | {a['model']} | {b['model']} | delta |", "|---|---|---|---|---|"]
    for task in a["tasks"]:
        if task not in b["tasks"]:
            continue
        for key, va in a["tasks"][task].items():
            vb = b["tasks"][task].get(key)
            if isinstance(va, bool) or not isinstance(va, (int, float)) or not isinstance(
                    vb, (int, float)):
                continue
            lines.append(f"| {task} | {key} | {_fmt(va)} | {_fmt(vb)} | {_fmt(vb - va)} |")
    return "\n".join(lines) + "\n"

"""The report card of an evaluation and what it resumes from.

    RUN/eval/RESULTS.json      {"model": ..., "tasks": {task: {metric: value, ...}}}
    RUN/eval/RESULTS.md        the same as a markdown table
    RUN/eval/cache/TASK.jsonl  one line per finished example (a header line first with the
                               settings): an interrupted evaluation picks up from here

``compare(a, b)`` lines two RESULTS.json up side by side with the deltas.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SUMMARY_KEYS = ("bpb", "ppl", "tokens", "acc", "acc_norm", "exact_match", "pass@1",
                "examples", "problems")


class ResultCache:
    """Per-example rows of one task under fixed settings, appended as they finish."""

    def __init__(self, folder: Path, task: str, settings: dict):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:120]
        self.path = Path(folder) / "cache" / f"{safe}.jsonl"
        self.settings = settings
        self.done: dict[int, dict] = {}
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0]) if lines else {}
            if header.get("settings") == settings:
                for line in lines[1:]:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut short by the interruption: redo from there
                    self.done[int(row["index"])] = row["row"]
            else:  # other settings: start over rather than mix two evaluations
                self.path.unlink()
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": settings}) + "\n", encoding="utf-8")

    def add(self, index: int, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"index": index, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def summary(metrics: dict) -> dict:
    """The scalar metrics of a task result (rows dropped)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def write_results(folder: Path, model: str, results: dict[str, dict]) -> Path:
    """RESULTS.json and RESULTS.md in ``folder`` (merged with tasks already there)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "RESULTS.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    tasks = {**old.get("tasks", {}), **{k: summary(v) for k, v in results.items()}}
    data = {"model": model, "tasks": tasks}
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

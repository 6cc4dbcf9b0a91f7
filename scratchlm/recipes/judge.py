"""``scratchlm evaluate judge``: score a ``test-with-responses.json`` with a judge model.

    scratchlm evaluate judge runs/instruct/test-with-responses.json               # Ollama, llama3
    scratchlm evaluate judge FILE --api openai --url http://127.0.0.1:8000/v1 --judge-model m

Each item needs the instruction (``prompt``, or ``instruction`` [+ ``input``] as in the book's
file), the reference (``reference`` or ``output``) and ``model_response``. Writes per-item
scores and the judge's answers, and prints the average and the number of unparsable answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.data.instruction import format_input
from scratchlm.data.text_file import read_text
from scratchlm.evaluate.judge import OllamaClient, OpenAIClient, score_responses
from scratchlm.recipes.configs import JudgeConfig  # noqa: F401 (its config)


def read_items(path: Path) -> list[dict]:
    try:
        rows = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    items = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "model_response" not in row:
            raise ValueError(f"{path}: entry {i} needs 'model_response'")
        prompt = row.get("prompt") or format_input(
            {"instruction": row.get("instruction", ""), "input": row.get("input", "")})
        reference = row.get("reference", row.get("output"))
        if reference is None:
            raise ValueError(f"{path}: entry {i} needs 'reference' or 'output'")
        items.append({"prompt": prompt, "reference": reference, "response": row["model_response"]})
    return items


def main(cfg: JudgeConfig) -> dict:
    path = Path(cfg.responses)
    items = read_items(path)
    if cfg.api == "ollama":
        client = OllamaClient(cfg.judge_model or "llama3", cfg.url or "http://127.0.0.1:11434",
                              cfg.timeout, cfg.retries)
    elif cfg.api == "openai":
        client = OpenAIClient(cfg.judge_model or "gpt-4o-mini", cfg.url, cfg.api_key, cfg.timeout,
                              cfg.retries)
    else:
        raise ValueError(f"--api must be ollama or openai, got {cfg.api!r}")
    client.check()  # an unreachable judge is said at once, not as N unparsable answers
    result = score_responses(items, client.chat, cfg.concurrency)
    summary = {"judge": f"{cfg.api}:{client.model}", "items": len(items),
               "scored": len(result.valid), "unparsable": result.unparsable,
               "average": result.average,
               "per_item": [{"score": s, "judge_answer": a} for s, a in
                            zip(result.scores, result.answers)]}
    out = Path(cfg.out) if cfg.out else path.with_name(path.stem + "-scores.json")
    out.write_text(json.dumps(summary, indent=2))
    avg = f"{result.average:.2f}" if result.average is not None else "n/a"
    failed = sum(a.startswith("error: ") for a in result.answers)
    print(f"average score {avg} over {len(result.valid)} of {len(items)} items "
          f"({result.unparsable - failed} unparsable, {failed} failed requests) -> {out}")
    if failed:
        first = next(a for a in result.answers if a.startswith("error: "))
        print(f"first failed request: {first[7:]}")
    return summary


def command(cfg: JudgeConfig) -> bool:
    """``scratchlm evaluate judge FILE``: False (exit status 1) when nothing was scored."""
    if not cfg.responses:
        raise ValueError("evaluate judge needs the responses file (test-with-responses.json)")
    return bool(main(cfg)["scored"])

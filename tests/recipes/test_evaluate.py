"""``scratchlm evaluate run`` writes a report card into the run, resumes an interrupted
evaluation from its cached rows, and ``evaluate compare`` lines two cards up with deltas."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.cli import main as cli


@pytest.fixture()
def run(tmp_path, small_bpe, verdict_text):
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.models.registry import build_model, preset
    from scratchlm.tokenizers import save_tokenizer

    torch.manual_seed(0)
    final = tmp_path / "run" / "final"
    save_pretrained(build_model(preset("llama-tiny")[1]), final)
    save_tokenizer(small_bpe, final)
    (tmp_path / "text.txt").write_text(verdict_text[:2000])
    docs = [{"context": f"Question {i}: pick one.", "choices": ["yes", "no", "maybe"],
             "label": i % 3} for i in range(6)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return tmp_path


def test_a_report_card_is_written_into_the_run_and_resumes(run, capsys, monkeypatch):
    tasks = ["--tasks", f"bpb:{run / 'text.txt'}", f"choice:{run / 'mc.jsonl'}"]
    assert cli(["evaluate", "run", "--model", str(run / "run" / "final"), *tasks]) == 0
    card = json.loads((run / "run" / "eval" / "RESULTS.json").read_text())
    bpb = card["tasks"][f"bpb:{run / 'text.txt'}"]
    assert bpb["bytes"] == 2000 and bpb["bpb"] > 0
    mc = card["tasks"][f"choice:{run / 'mc.jsonl'}"]
    assert mc["examples"] == 6 and 0 <= mc["acc"] <= 1 and "rows" not in mc
    assert "| choice:" in (run / "run" / "eval" / "RESULTS.md").read_text()

    cache = next((run / "run" / "eval" / "cache").glob("choice*.jsonl"))
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # 2 rows, a cut-off third
    import scratchlm.evaluate.choice as choice

    scored = []
    real = choice.loglikelihoods
    monkeypatch.setattr(choice, "loglikelihoods",
                        lambda m, pairs, **k: scored.append(len(pairs)) or real(m, pairs, **k))
    assert cli(["evaluate", "run", "--model", str(run / "run" / "final"),
                "--tasks", f"choice:{run / 'mc.jsonl'}"]) == 0
    assert scored == [12]  # one batch: the 4 examples (x 3 choices) not in the cache
    again = json.loads((run / "run" / "eval" / "RESULTS.json").read_text())
    assert again["tasks"][f"choice:{run / 'mc.jsonl'}"]["acc"] == mc["acc"]
    assert f"bpb:{run / 'text.txt'}" in again["tasks"]  # earlier tasks stay on the card


def test_compare_prints_both_with_deltas(run, capsys):
    a, b = run / "a", run / "b"
    for folder, acc in ((a, 0.25), (b, 0.5)):
        folder.mkdir()
        (folder / "RESULTS.json").write_text(json.dumps(
            {"model": folder.name, "tasks": {"mc": {"acc": acc, "examples": 4}}}))
    assert cli(["evaluate", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| mc | acc | 0.2500 | 0.5000 | 0.2500 |" in out


def test_bad_requests_are_refused_before_loading(run):
    from scratchlm.recipes.configs import EvaluateConfig
    from scratchlm.recipes.evaluate import main

    with pytest.raises(ValueError, match="unknown task 'mmlu'"):
        main(EvaluateConfig(model="no-such-model", tasks=["mmlu"]))
    with pytest.raises(ValueError, match="--limit must be >= 1"):
        main(EvaluateConfig(model="m", limit=0))


def test_a_training_recipe_evaluates_its_final_model(tmp_path, capsys):
    args = ["pretrain", "--model", "gpt2-124m", "--n_layer", "2", "--n_embd", "32",
            "--n_head", "2", "--context_length", "32", "--data", "the-verdict",
            "--train.max_steps", "2", "--train.batch_size", "2", "--train.eval_every", "2",
            "--train.tensorboard", "false", "--sample_tokens", "0"]
    assert cli([*args, "--out", str(tmp_path / "bad"), "--eval.tasks", "hellaswag"]) == 2
    assert "unknown task 'hellaswag'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before any training
    assert cli([*args, "--out", str(tmp_path / "run"), "--eval.tasks", "bpb:the-verdict",
                "--eval.limit", "3000"]) == 0
    card = json.loads((tmp_path / "run" / "eval" / "RESULTS.json").read_text())
    assert card["tasks"]["bpb:the-verdict"]["bytes"] == 3000

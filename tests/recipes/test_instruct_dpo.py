"""The instruction and DPO recipes end to end on a tiny Llama with SmolLM2's tokenizer and chat
template, through the command line as a user runs them; then the judge CLI on the responses."""

from __future__ import annotations

import json
import math

import pytest
from test_cli import run


def test_instruct_then_dpo_then_judge(tiny_chat_model, tmp_path):
    model_dir = tiny_chat_model(context_length=512, tie_embeddings=True)
    out = tmp_path / "sft"
    r = run("finetune", "instruct", "--model", str(model_dir), "--data", "instruction-data",
            "--limit", "48", "--epochs", "2", "--train.batch_size", "4", "--train.lr", "3e-3",
            "--max_new_tokens", "6", "--out", str(out), "--train.tensorboard", "false")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["style"] == "chat"
    assert result["test_loss_after"] < result["test_loss_before"] - 1.0
    rows = json.loads((out / "test-with-responses.json").read_text())
    assert len(rows) == 4 and all("model_response" in row for row in rows)
    assert (out / "loss.png").is_file() and (out / "metrics.csv").is_file()
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    _, tok = load_model_and_tokenizer(str(out / "final"))  # with its own tokenizer
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"

    dpo = tmp_path / "dpo"
    r = run("finetune", "dpo", "--model", str(out / "final"),
            "--data", "instruction-data-with-preference", "--limit", "80", "--lora.rank", "8",
            "--epochs", "2", "--train.lr", "1e-3", "--dpo.beta", "0.5", "--max_new_tokens", "6",
            "--out", str(dpo), "--train.tensorboard", "false")
    assert r.returncode == 0, r.stderr
    prefs = json.loads((dpo / "preferences.json").read_text())
    assert prefs["before"]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    import csv

    losses = [float(row["loss"]) for row in csv.DictReader(open(dpo / "metrics.csv"))
              if row.get("loss")]
    assert losses[-1] < losses[0] < 0.7  # the training pairs' DPO loss falls from ln 2
    assert set(prefs["after"]) == {"loss", "chosen_reward", "rejected_reward", "margin", "accuracy"}
    assert (dpo / "final" / "adapter" / "lora.json").is_file()


def test_packed_instruction_batches_train_as_the_padded_ones(tiny_chat_model, tmp_path):
    """--packing true: the same examples per step and the same loss (padding-free rows with a
    document mask), so the training curve matches the padded run's."""
    import csv

    model_dir = tiny_chat_model(context_length=512, tie_embeddings=True)
    curves = []
    for packing in ("false", "true"):
        out = tmp_path / f"sft-{packing}"
        r = run("finetune", "instruct", "--model", str(model_dir), "--data",
                "instruction-data", "--limit", "32", "--epochs", "1", "--train.batch_size",
                "4", "--train.lr", "1e-3", "--train.log_every", "1", "--test_responses",
                "false", "--packing", packing, "--out", str(out), "--train.tensorboard",
                "false")
        assert r.returncode == 0, r.stderr
        curves.append([float(row["loss"]) for row in csv.DictReader(open(out / "metrics.csv"))
                       if row.get("loss")])
    assert len(curves[0]) >= 5
    assert curves[1] == pytest.approx(curves[0], abs=2e-4)


def test_packed_dpo_runs_end_to_end(tiny_chat_model, tmp_path):
    model_dir = tiny_chat_model(context_length=512, tie_embeddings=True)
    out = tmp_path / "dpo"
    r = run("finetune", "dpo", "--model", str(model_dir), "--data",
            "instruction-data-with-preference", "--limit", "40", "--lora.rank", "4",
            "--epochs", "1", "--packing", "true", "--test_responses", "false", "--out",
            str(out), "--train.tensorboard", "false")
    assert r.returncode == 0, r.stderr
    prefs = json.loads((out / "preferences.json").read_text())
    assert prefs["before"]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert prefs["before"]["accuracy"] == pytest.approx(0.5)

"""The command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "scratchlm", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=os.environ.copy(), timeout=600)


@pytest.mark.slow  # the demo is the README's first command; CI runs this too
def test_demo_fast(tmp_path):
    r = run("demo", "--fast", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    assert "scratchlm demo finished" in r.stdout
    assert (tmp_path / "demo" / "tokenizer.json").is_file()
    assert (tmp_path / "demo" / "shards" / "meta.json").is_file()
    for stage in ("classify", "instruct", "serve"):
        assert f"  {stage} (" in r.stdout  # every stage reported in the summary, with its time
    assert (tmp_path / "demo" / "classify" / "final" / "adapter" / "adapter.safetensors").is_file()
    # light on disk: finetuned finals hold what was trained, finished runs no checkpoints
    demo = tmp_path / "demo"
    for stage in ("classify", "instruct", "dpo"):
        assert not (demo / stage / "final" / "model.safetensors").exists()
        assert not (demo / stage / "checkpoints").exists()
    assert sum(f.stat().st_size for f in demo.rglob("*") if f.is_file()) < 150e6
    assert (tmp_path / "demo" / "dpo" / "preferences.json").is_file()
    assert "[serve] answer (openai client):" in r.stdout
    import json

    after = json.loads((tmp_path / "demo" / "eval" / "after" / "RESULTS.json").read_text())
    acc = after["tasks"]["sms-spam test (LoRA classifier)"]["acc"]
    assert f"test_after={acc:.3g}" in r.stdout  # the card holds the stage's own number
    assert "| sms-spam test (LoRA classifier) | acc | " in r.stdout
    assert "| preference pairs (DPO) | pref_acc | " in r.stdout


def test_prepare_and_bad_input(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("Every effort moves you\n" * 50)
    r = run("prepare", "--data", str(f), "--out", str(tmp_path / "s"), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "251 tokens" in r.stdout
    f.write_bytes(b"\xc3")
    r = run("prepare", "--data", str(f), "--out", str(tmp_path / "s2"))
    assert r.returncode == 2 and "x.txt:1: not UTF-8 text" in r.stderr
    r = run("prepare", "--data", "the-verdict", "--out", str(tmp_path / "s3"), "--workers", "1")
    assert r.returncode == 0, r.stderr  # a registered data set name, as pretrain takes
    assert (tmp_path / "s3" / "meta.json").is_file()


def test_unknown_stage_is_an_error(tmp_path):
    r = run("demo", "--stages", "nope", "--out", str(tmp_path))
    assert r.returncode == 2 and "unknown ['nope']" in r.stderr


def test_generate_from_a_saved_model(tmp_path):
    import torch

    from scratchlm.generation.sampling import generate
    from scratchlm.models.gpt import GPT, GPTConfig
    from scratchlm.checkpoints.ours import save_pretrained

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny")).eval()
    save_pretrained(model, tmp_path / "m")
    r = run("generate", "--model", str(tmp_path / "m"), "--prompt", "Every effort moves you",
            "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    from scratchlm.tokenizers import get_tokenizer

    tok = get_tokenizer("gpt2")
    want = generate(model, torch.tensor([tok.encode("Every effort moves you")]), 5)
    assert r.stdout.strip() == tok.decode(want[0].tolist()).strip()
    r = run("generate", "--model", str(tmp_path / "nope"))
    assert r.returncode == 2 and "neither a preset" in r.stderr


def test_chat_with_piped_input():
    # the file's exact weights: the default (auto: 8-bit activations on x86, as llama.cpp
    # multiplies) answers this borderline question as llama.cpp does, "L'Etoile, la Cite, ..."
    r = subprocess.run([sys.executable, "-m", "scratchlm", "chat", "--max-new-tokens", "20",
                        "--quantize", "gguf"],
                       input="What is the capital of France?\n/reset\n/quit\n", cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "(conversation cleared)" in r.stdout


def test_plan_and_bad_tagging_data(tmp_path):
    r = run("plan", "--model", "gpt2-124m", "--tokens", "2.5e9", "--batch", "8",
            "--context", "1024", "--peak-tflops", "989", "--gpu-memory", "80", "--json")
    assert r.returncode == 0, r.stderr
    import json

    plan = json.loads(r.stdout)
    assert plan["params"] == 124_439_808 and plan["fits"] is True
    assert plan["chinchilla_tokens"] == 20 * plan["params"]
    bad = tmp_path / "bad.conll"
    bad.write_text("John\tB-PER\nlives in\n")
    r = run("finetune", "tokens", "--model", "gpt2-124m", "--data", str(bad),
            "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "bad.conll:2: tag 'in' is not IOB2" in r.stderr

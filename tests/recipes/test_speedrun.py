"""``scratchlm speedrun``: the cpu preset shrunk (--fast) runs every stage into one folder,
resumes without redoing a finished stage, and leaves a chat model the other commands take."""

from __future__ import annotations

import json

import pytest

from scratchlm.speedrun.run import main
from scratchlm.recipes.speedrun_config import EXTRA_STAGES, PRESETS, STAGES, SpeedrunConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedrun") / "run"
    main(SpeedrunConfig(out=str(out), fast=True, stages=["tokenizer"]))
    # the rest, and the baseline; the tokenizer is not redone
    main(SpeedrunConfig(out=str(out), fast=True, stages=[*STAGES, *EXTRA_STAGES]))
    return out


def test_every_stage_runs_into_one_folder(run):
    record = json.loads((run / "stages.json").read_text())
    assert (record["preset"], record["fast"]) == ("cpu", True)
    state = record["stages"]
    assert list(state) == ["tokenizer", "pretrain", "sft", "evaluate", "baseline", "report"]
    assert state["tokenizer"]["result"]["bytes_per_token"] > 1
    assert state["pretrain"]["result"]["model_config"]["n_layer"] == 2  # --fast's depth 2
    assert set(state["evaluate"]["result"]["sft"]) == {f"bpb:{run / 'data' / 'heldout.txt'}",
                                                      "gsm8k"}
    report = (run / "REPORT.md").read_text()
    for part in ("## Stages", "## Tokenizer", "## Pretraining", "## Chat finetuning",
                 "## Evaluation of the base model", "## Chat samples", "A `--fast` run",
                 "## Against today's defaults"):
        assert part in report, part
    for plot in ("pretrain-loss.png", "pretrain-bpb.png", "sft-loss.png"):
        assert (run / "plots" / plot).is_file(), plot


def test_the_tokenizer_knows_chat_and_the_chat_model_ends_turns(run):
    from scratchlm.tokenizers import get_tokenizer

    tok = get_tokenizer(str(run / "tokenizer"))
    assert len(tok.encode("<|im_start|>", allowed_special="all")) == 1
    assert tok.eos_token == "<|endoftext|>"  # documents end with it in pretraining
    chat = get_tokenizer(str(run / "sft" / "final"))
    assert chat.eos_token == "<|im_end|>" and chat.chat_template == tok.chat_template
    base = json.loads((run / "base" / "final" / "tokenizer_config.json").read_text())
    assert base["eos_token"] == "<|endoftext|>"  # the base model folder is left as it was


def test_a_finished_stage_is_not_run_again(run, capsys):
    before = json.loads((run / "stages.json").read_text())["stages"]
    main(SpeedrunConfig(out=str(run), fast=True, stages=["tokenizer", "pretrain"]))
    assert "[pretrain] done before" in capsys.readouterr().out
    assert json.loads((run / "stages.json").read_text())["stages"]["pretrain"] == before["pretrain"]
    # another preset, or the full run over a --fast one, is refused, not silently mixed
    with pytest.raises(ValueError, match="holds a speedrun of preset 'cpu' \\(fast=True\\)"):
        main(SpeedrunConfig(out=str(run), stages=["report"]))


def test_the_baseline_has_the_same_flops(run):
    """Today's defaults (GPT-2's 50,257 tokens) at the same shape take fewer, dearer steps."""
    from scratchlm.models.accounting import flops_per_token
    from scratchlm.models.registry import family_named

    got = json.loads((run / "stages.json").read_text())["stages"]["baseline"]["result"]
    saved = json.loads((run / "baseline" / "config.json").read_text())
    assert saved["tokenizer"] == "gpt2" and saved["train"]["optimizer"] == "adamw"
    assert saved["train"]["schedule"] == "cosine" and saved["packing"] == "concat"
    assert saved["train"]["lr"] == pytest.approx(4e-4)  # the default rate, not a scaled one
    cfg = family_named(saved["model_family"]).config(saved["model_config"])
    per_step = saved["train"]["batch_size"] * cfg.context_length
    theirs = flops_per_token(cfg, cfg.context_length)[1] * per_step * got["steps"]
    assert got["steps"] < got["ours_steps"]
    assert theirs == pytest.approx(got["flops"], rel=0.5 / got["steps"] + 1e-9)
    assert got["bpb"] > 0 and got["baseline_bpb"] > 0


def test_a_stage_needs_the_ones_before(tmp_path):
    with pytest.raises(ValueError, match="stage 'sft' needs pretrain finished first"):
        main(SpeedrunConfig(out=str(tmp_path / "r"), fast=True, stages=["sft"]))


def test_the_result_exports_to_gguf(run, tmp_path):
    from scratchlm.recipes.configs import ExportConfig
    from scratchlm.recipes.export import main as export

    export(ExportConfig(model=str(run / "sft" / "final"), quant="q8_0",
                        out=str(tmp_path / "model.gguf")))
    assert (tmp_path / "model.gguf").stat().st_size > 100_000


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--preset must be one of"):
        SpeedrunConfig(preset="tpu")
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        SpeedrunConfig(stages=["train"])
    (tmp_path / "base").mkdir()
    with pytest.raises(ValueError, match="no stages.json: pass --overwrite"):
        main(SpeedrunConfig(out=str(tmp_path), fast=True))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_stage_configs(name):
    """Every preset's stage settings build their recipes' configs (an unknown key fails)."""
    from scratchlm.config import from_dict
    from scratchlm.recipes.configs import (EvaluateConfig, InstructConfig, PretrainConfig,
                                           TrainTokenizerConfig)

    p = PRESETS[name]
    from_dict(TrainTokenizerConfig, p.tokenizer)
    from_dict(PretrainConfig, p.pretrain)
    from_dict(InstructConfig, p.sft)
    from_dict(EvaluateConfig, p.evaluate)


@pytest.mark.slow
def test_under_torchrun(tmp_path):
    """Two processes: pretraining, SFT and the baseline on both (DDP), the other stages on the
    first."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(29800 + os.getpid() % 100), "-m", "scratchlm", "speedrun",
         "--fast", "--out", str(out), "--stages", ",".join([*STAGES, *EXTRA_STAGES])],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / "stages.json").read_text())["stages"]
    assert list(state) == ["tokenizer", "pretrain", "sft", "evaluate", "baseline", "report"]
    assert state["baseline"]["result"]["baseline_bpb"] > 0
    saved = json.loads((out / "base" / "config.json").read_text())
    assert saved["train"]["max_steps"] == 12 and (out / "sft" / "final").is_dir()
    assert (out / "REPORT.md").is_file()

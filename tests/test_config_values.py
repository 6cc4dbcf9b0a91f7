"""Bad values are refused where they are declared: each message names the key and the value,
for flags and config files alike; NaN and infinity are never settings."""

from __future__ import annotations

import pytest

from scratchlm.cli import main, resolve
from scratchlm.config import Range, ranges


@pytest.mark.parametrize("argv,message", [
    (["pretrain", "--train.grad_clip", "-1"], r"--train.grad_clip must be >= 0 .*got -1.0"),
    (["pretrain", "--train.lr", "nan"], r"--train.lr must be a finite number, got nan"),
    (["pretrain", "--train.lr=-1e-3"], r"--train.lr must be > 0, got -0.001"),
    (["pretrain", "--train.min_lr", "inf"], r"--train.min_lr must be a finite number"),
    (["pretrain", "--train.beta2", "1.0"], r"--train.beta2 must be in \[0, 1\), got 1.0"),
    (["pretrain", "--train.warmup_fraction", "1"], r"--train.warmup_fraction must be in \[0, 1\)"),
    (["pretrain", "--train.batch_size", "0"], r"--train.batch_size must be >= 1, got 0"),
    (["pretrain", "--train.keep_last", "-2"], r"--train.keep_last must be >= 0, got -2"),
    (["pretrain", "--val-fraction", "1.5"], r"--val_fraction must be in \[0, 1\), got 1.5"),
    (["pretrain", "--n-head", "0"], r"--n_head must be >= 1, got 0"),
    (["finetune", "classify", "--epochs", "0"], r"--epochs must be >= 1, got 0"),
    (["finetune", "classify", "--lora.rank", "-4"], r"--lora.rank must be >= 0, got -4"),
    (["finetune", "classify", "--lora.alpha", "0"], r"--lora.alpha must be > 0, got 0.0"),
    (["finetune", "instruct", "--lora.dropout", "1"], r"--lora.dropout must be in \[0, 1\)"),
    (["finetune", "dpo", "--dpo.beta", "0"], r"--dpo.beta must be > 0, got 0.0"),
    (["finetune", "grpo", "--grpo.top_p", "0"], r"--grpo.top_p must be in \(0, 1\], got 0.0"),
    (["finetune", "grpo", "--grpo.eps_low", "1"], r"--grpo.eps_low must be in \[0, 1\)"),
    # one home: the flag and GRPOSettings built in Python meet the same bound (>= 0 and > 0
    # disagreed before)
    (["finetune", "grpo", "--grpo.temperature", "0"], r"--grpo.temperature must be > 0, got 0"),
    (["finetune", "grpo", "--grpo.group_size", "1"], r"--grpo.group_size must be >= 2, got 1"),
    (["distill", "--alpha", "1.5"], r"--alpha must be in \[0, 1\], got 1.5"),
    (["distill", "--temperature", "0"], r"--temperature must be > 0, got 0.0"),
    (["serve", "--port", "70000"], r"--port must be in \[0, 65535\], got 70000"),
    (["generate", "--max-new-tokens", "0"], r"--max_new_tokens must be >= 1, got 0"),
    (["evaluate", "run", "--gsm8k.samples", "0"], r"--gsm8k.samples must be >= 1, got 0"),
])
def test_a_bad_value_names_key_and_value(argv, message):
    with pytest.raises(ValueError, match=message):
        resolve(argv)


def test_the_cli_answers_with_one_line(capsys):
    assert main(["pretrain", "--train.grad_clip", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("scratchlm pretrain: error: --train.grad_clip must be >= 0 (0 turns clipping "
                   "off), got -1.0")


def test_a_config_file_is_checked_the_same_way(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  lr: .nan\n")
    with pytest.raises(ValueError, match=r"--train.lr must be a finite number"):
        resolve(["pretrain", "--config", str(tmp_path / "run.yaml")])


def test_defaults_are_inside_their_bounds():
    """Every command's own defaults pass the checks (a bound that refused a default would break
    the command for everyone)."""
    import dataclasses

    from scratchlm.config import check_bounds
    from scratchlm.recipes import configs

    def walk(obj, prefix=""):
        check_bounds(obj, prefix)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")

    classes = [c for c in vars(configs).values()
               if isinstance(c, type) and dataclasses.is_dataclass(c)]
    assert len(classes) > 15
    for cls in classes:
        walk(cls())
    from scratchlm.finetune.config import GRPOSettings

    assert ranges(GRPOSettings)["top_p"] == Range(0, 1, low_open=True)


def test_a_config_built_in_python_meets_the_same_range():
    """The range is on the field's type, read by flags, files and ``__post_init__`` alike."""
    from scratchlm.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"--train.batch_size must be >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"--train.grad_clip must be >= 0 \(0 turns clipping off\)"):
        TrainConfig(grad_clip=-1.0)


@pytest.mark.parametrize("argv", [["pretrain", "--train.max_step", "5"],
                                  ["finetune", "classify", "--lora.ran", "4"],
                                  ["evaluate", "run", "--gsm8k.sampl", "2"]])
def test_abbreviated_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        resolve(argv)
    assert "unrecognized arguments" in capsys.readouterr().err

"""Every command's flags come from its config dataclass: each shipped file in configs/ is read
through the command line it documents (its second line) into that command's config, unknown
keys are refused, and building any command's flags or --help imports no torch."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
COMMANDS = ["demo", "prepare", "pretrain", "finetune classify", "finetune instruct",
            "finetune dpo", "finetune grpo", "finetune reward", "finetune tokens", "finetune prompt", "distill",
            "evaluate judge", "generate", "chat", "serve", "plan", "train-tokenizer", "tune",
            "export", "evaluate run", "evaluate compare", "speedrun"]


def documented_argv(path) -> list[str]:
    """The `scratchlm ...` line a config file documents, as argv (with its own path)."""
    line = next(ln for ln in path.read_text().splitlines() if "scratchlm " in ln and "--config" in ln)
    words = shlex.split(line.lstrip("# "))
    words = words[words.index("scratchlm") + 1:]
    return [str(ROOT / w) if w.startswith("configs/") else w for w in words]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_builds_its_command(path):
    import yaml

    from scratchlm.cli import resolve
    from scratchlm.config import flatten

    cfg = resolve(documented_argv(path))
    assert cfg is not None
    given = yaml.safe_load(path.read_text())
    values = flatten(cfg)
    for key, value in flatten_dict(given).items():
        assert key in values, key
        want = values[key]
        assert want == value or (isinstance(want, float) and want == float(value)), key


def flatten_dict(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_every_command_has_a_shipped_config():
    documented = {" ".join(w for w in documented_argv(p)[:2] if not w.startswith("-"))
                  for p in CONFIGS}
    documented = {d if d.split()[0] in ("finetune", "evaluate") else d.split()[0]
                  for d in documented}
    assert set(COMMANDS) <= documented, set(COMMANDS) - documented


def test_flags_override_the_file_and_unknown_keys_are_refused(tmp_path):
    from scratchlm.cli import resolve

    cfg = resolve(["generate", "--config", str(ROOT / "configs" / "generate.yaml"),
                   "--top-k", "5", "--chat"])
    assert cfg.top_k == 5 and cfg.chat is True and cfg.temperature == 1.4
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\ntemprature: 0.5\n")
    with pytest.raises(ValueError, match="unknown config key 'temprature'"):
        resolve(["generate", "--config", str(bad)])


def test_building_any_commands_flags_imports_no_torch():
    code = ("import sys\nfrom scratchlm.cli import build_parser\n"
            f"for c in {COMMANDS!r}:\n    build_parser(c.split() + ['--help'])\n"
            "build_parser(['--help'])\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "instruct", "--help"],
                                  ["serve", "--help"]])
def test_help_answers(argv):
    r = subprocess.run([sys.executable, "-m", "scratchlm", *argv], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "usage: scratchlm" in r.stdout


def test_help_shows_each_fields_comment_and_the_recipes_default():
    from scratchlm.cli import build_parser

    parser = build_parser(["finetune", "instruct", "--help"])
    instruct = parser._subparsers._group_actions[0].choices["finetune"]._subparsers \
        ._group_actions[0].choices["instruct"]
    text = instruct.format_help()
    assert "0: no LoRA" in text  # LoraConfig.rank's comment
    assert "(default: 5e-05)" in text  # InstructConfig's train.lr, not TrainConfig's 4e-4


def _command_parser(argv: list[str]):
    import argparse

    from scratchlm.cli import build_parser

    p = build_parser(argv)
    for word in argv:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[word]
    return p


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_says_what_it_does_and_its_default(command):
    """--help: a description and the default of every flag, no raw backticks."""
    bad = []
    for action in _command_parser(command.split())._actions:
        if not action.option_strings or action.dest in ("help", "config"):
            continue
        text = action.help or ""
        described = text.split("(default:")[0].strip()
        if not described or "(default:" not in text or "`" in text:
            bad.append(f"{action.option_strings[0]}: {text!r}")
    assert not bad, "\n".join(bad)


def test_version():
    r = subprocess.run([sys.executable, "-m", "scratchlm", "--version"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("scratchlm 0.")

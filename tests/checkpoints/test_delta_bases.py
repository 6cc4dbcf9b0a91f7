"""A delta final/'s base (checkpoints/delta.py): a relative base is read from the folder holding the
config.json, not from wherever the reader started; a base that leads back to the folder is a
named error, not a RecursionError; a damaged lora.json is named, field by field."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchlm.finetune.config import LoraConfig
from scratchlm.finetune.lora import apply_lora, lora_modules
from scratchlm.finetune.setup import save_final
from scratchlm.checkpoints.generation_config import sampling_defaults
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.checkpoints.files import CheckpointError
from scratchlm.checkpoints.load import load_pretrained
from scratchlm.checkpoints.ours import save_pretrained


@pytest.fixture()
def delta(tmp_path, gpt2_tok):
    """(base folder, final folder): a LoRA delta over a tiny GPT, and its output on ``x``."""
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_pretrained(GPT(GPTConfig(vocab_size=64, context_length=16, n_embd=32, n_layer=2,
                                  n_head=4)), base)
    lora = LoraConfig(rank=2, alpha=4, targets=["q", "v"])
    model = load_pretrained(str(base))
    apply_lora(model, lora.rank, lora.alpha, tuple(lora.targets))
    for m in lora_modules(model).values():
        for b in m.lora_B.values():
            torch.nn.init.normal_(b.weight, std=0.05)
    save_final(model, gpt2_tok, tmp_path / "final", lora, str(base))
    return base, tmp_path / "final"


def _set_base(folder, name: str) -> None:
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    meta["scratchlm"]["base"]["model"] = name
    path.write_text(json.dumps(meta))


def test_a_relative_base_is_read_from_the_folder_holding_it(delta, tmp_path, monkeypatch):
    base, final = delta
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        want = load_pretrained(str(final))(x)
    (base / "generation_config.json").write_text(json.dumps({"do_sample": True,
                                                             "temperature": 0.7}))
    _set_base(final, "../base")  # as a user moving a run with its base would write it
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # "../base" from here does not exist
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(str(final))(x), want)
    from scratchlm.checkpoints.delta import base_chain

    assert base_chain(str(final)) == [str(final.resolve()), str(base.resolve())]
    assert sampling_defaults(str(final)).temperature == 0.7  # the base's, found the same way


def test_a_base_that_is_the_folder_itself_is_named(delta):
    _, final = delta
    _set_base(final, ".")
    with pytest.raises(CheckpointError, match=r"final/config.json: its base '\.' leads back "
                                              r"to itself \(.*final -> .*final\)"):
        load_pretrained(str(final))


def test_two_folders_naming_each_other_are_named(delta, tmp_path):
    import shutil

    _, final = delta
    other = tmp_path / "other"
    shutil.copytree(final, other)
    _set_base(final, str(other))
    _set_base(other, "../final")
    with pytest.raises(CheckpointError, match=r"leads back to itself \(.*final -> .*other -> "
                                              r".*final\)"):
        load_pretrained(str(final))
    assert sampling_defaults(str(final)).temperature == 0.0  # no loop there either


@pytest.mark.parametrize("field,value,message", [
    ("alpha", math.nan, "'alpha' must be a finite number, got nan"),
    ("alpha", math.inf, "'alpha' must be a finite number, got inf"),
    ("alpha", "8", "'alpha' must be a finite number, got '8'"),
    ("rank", 0, "'rank' must be an integer >= 1, got 0"),
    ("rank", 2.0, "'rank' must be an integer >= 1, got 2.0"),
    ("scaling", "half", "'scaling' must be 'book' or 'peft'"),
    ("parts", {"trf_blocks.0.att.qkv": {"q": [32, 0]}}, "'parts' must be"),
    ("targets", None, "'targets' is missing"),
])
def test_a_damaged_lora_json_is_named_when_merged_or_loaded(delta, field, value, message):
    from scratchlm.finetune.lora import load_adapter

    base, final = delta
    path = final / "adapter" / "lora.json"
    settings = json.loads(path.read_text())
    if value is None:
        del settings[field]
    else:
        settings[field] = value
    path.write_text(json.dumps(settings))  # NaN and Infinity are what json.dumps writes
    where = r"adapter/lora.json: "
    with pytest.raises(CheckpointError, match=where + message.replace("(", r"\(")):
        load_pretrained(str(final))  # the delta's merge
    with pytest.raises(ValueError, match=where + message.replace("(", r"\(")):
        load_adapter(load_pretrained(str(base)), final / "adapter")  # --adapter

"""Settings files beside weights are checked field by field, the file and field named: a PEFT
adapter_config.json whose lora_alpha is NaN would merge silently into a model printing "!!!!",
a reward.json with a style of the wrong type would rate answers in a format never trained on,
and a LoRA alpha of NaN is refused wherever an adapter is built."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchlm.finetune.lora import LoRALinear, apply_lora, lora_modules
from scratchlm.models.llama import Llama, LlamaConfig


def _llama():
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=64, context_length=16, n_embd=32, n_layer=2, n_head=4,
                             n_kv_head=2, intermediate_size=64)).eval()


@pytest.fixture()
def peft_folder(tmp_path):
    from scratchlm.finetune.peft_format import save_peft_adapter

    model = _llama()
    apply_lora(model, rank=2, alpha=4, targets=("q", "v"), scaling="book")
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B["all"].weight, std=0.05)
    return save_peft_adapter(model, tmp_path / "adapter")


@pytest.mark.parametrize("field,value,message", [
    ("lora_alpha", math.nan, "'lora_alpha' must be a finite number, got nan"),
    ("lora_alpha", math.inf, "'lora_alpha' must be a finite number, got inf"),
    ("lora_alpha", "8", "'lora_alpha' must be a finite number, got '8'"),
    ("r", 0, "'r' must be an integer >= 1, got 0"),
    ("r", "2", "'r' must be an integer >= 1, got '2'"),
    ("target_modules", ["wq"], "'target_modules' must be a list of q_proj"),
])
def test_a_damaged_peft_config_names_the_file_and_field(peft_folder, field, value, message):
    from scratchlm.finetune.peft_format import load_peft_adapter

    path = peft_folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg[field] = value
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"adapter_config.json: " + message):
        load_peft_adapter(_llama(), peft_folder)


def test_a_nan_alpha_is_refused_when_an_adapter_is_built():
    with pytest.raises(ValueError, match="LoRA alpha must be a finite number, got nan"):
        LoRALinear(torch.nn.Linear(4, 4), rank=2, alpha=math.nan)


@pytest.fixture()
def reward_folder(tmp_path, small_bpe):
    from scratchlm.finetune.reward import RewardScorer
    from scratchlm.models.registry import build_model, preset

    torch.manual_seed(0)
    model = build_model(preset("llama-tiny")[1])
    model.out_head = torch.nn.Linear(model.cfg.n_embd, 1)  # a reward head
    RewardScorer(model, small_bpe, "alpaca").save(tmp_path / "rm")
    return tmp_path / "rm"


@pytest.mark.parametrize("content,message", [
    ({"style": 3}, "'style' must be one of alpaca, phi3, chat, got 3"),
    ({"style": "ALPACA"}, "'style' must be one of alpaca, phi3, chat, got 'ALPACA'"),
    ({"style": ["alpaca"]}, r"'style' must be one of .*, got \['alpaca'\]"),
    ({}, "'style' is missing"),
    (["alpaca"], "'style' is missing"),
    ("{not json", "not a reward model's settings"),
])
def test_a_damaged_reward_json_names_the_file_and_field(reward_folder, content, message):
    from scratchlm.finetune.reward import RewardScorer

    assert RewardScorer.load(reward_folder).style == "alpaca"  # as saved
    text = content if isinstance(content, str) else json.dumps(content)
    (reward_folder / "reward.json").write_text(text)
    with pytest.raises(ValueError, match=r"reward.json: " + message):
        RewardScorer.load(reward_folder)

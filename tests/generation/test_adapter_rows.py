"""Rows with different LoRA adapters (and none) in one continuous batch: each gets exactly the
tokens it gets decoded alone with its adapter switched on, greedy and seeded, rows joining
while others decode; equal prompts with different adapters are not shared (neither the
prefill nor the kept prefix)."""

from __future__ import annotations

from dataclasses import replace

import torch

from scratchlm.finetune.adapter_bank import add_named_adapter, set_adapter
from scratchlm.finetune.lora import LoraConfig, apply_lora, save_adapter
from scratchlm.generation.engine import Engine, SamplingParams
from tests.generation.test_slots import llama, run_continuous


def with_adapters(tmp_path):
    model = llama()
    for name, (rank, targets, seed) in {"a": (4, ["q", "v"], 1),
                                        "b": (2, ["ff", "out"], 2)}.items():
        m = llama()
        apply_lora(m, rank, 8.0, tuple(targets))
        torch.manual_seed(seed)
        for p in m.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.3)  # a "trained" adapter
        save_adapter(m, tmp_path / name, LoraConfig(rank=rank, alpha=8.0, targets=targets))
        add_named_adapter(model, name, tmp_path / name)
    return model.eval()


def alone(model, prompt, params):
    set_adapter(model, params.adapter)
    return Engine(model).generate([prompt], replace(params, adapter=None))[0]


def test_rows_with_different_adapters_equal_each_alone(tmp_path):
    model = with_adapters(tmp_path)
    shared = list(range(5, 25))  # long enough for the prefix cache
    arrivals = [  # (step, prompt, params)
        (0, shared, SamplingParams(max_new_tokens=10, adapter="a")),
        (0, shared, SamplingParams(max_new_tokens=10, adapter="b")),
        (0, shared, SamplingParams(max_new_tokens=10)),
        (2, shared + [30], SamplingParams(max_new_tokens=8, adapter="b")),
        (3, [40, 41, 42], SamplingParams(max_new_tokens=9, temperature=1.0, seed=4,
                                         adapter="a")),
        (4, shared + [31, 32], SamplingParams(max_new_tokens=6)),
    ]
    want = [alone(model, p, s) for _, p, s in arrivals]
    assert want[0] != want[1] != want[2]  # the adapters change the output
    got, _, late, _ = run_continuous(Engine(model), slots=4, together=True,
                                     arrivals=arrivals)
    assert got == want
    assert late  # rows joined a batch already decoding

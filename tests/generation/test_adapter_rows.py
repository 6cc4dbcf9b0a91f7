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
from scratchlm.generation.slots import SlotBatch
from tests.generation.test_slots import llama


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
    batch = SlotBatch(Engine(model), 4)
    outs = {i: [] for i in range(len(arrivals))}
    step, pending = 0, list(enumerate(arrivals))
    while pending or batch.rows:
        now = [(p, s, i) for i, (t, p, s) in pending if t <= step]
        now = now[:4 - len(batch.rows)]
        if now:
            batch.join_all(now)
            pending = [x for x in pending if x[0] not in {i for _, _, i in now}]
        for row, tok in batch.sample():
            outs[row.tag].append(tok)
            if row.generated == row.params.max_new_tokens:
                batch.leave(row)
        batch.forward()
        step += 1
    assert [outs[i] for i in range(len(arrivals))] == want

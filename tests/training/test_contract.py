"""The training contract has one home (``training/contract.py``): the loop reads a loss
module's optional hooks through ``hooks()``, never by ``getattr`` of its own."""

from __future__ import annotations

import ast

import torch
from torch import nn

from conftest import ROOT
from scratchlm.training.contract import LossHooks, LossModule, hooks


class Plain(nn.Module):
    def forward(self, x, y):
        return x.sum()

    def batch_weight(self, x, y):
        return torch.tensor(1)


class WithHooks(Plain):
    unit, has_eval_loss, batch_repeats = "prompts", False, 3

    def step_metrics(self):
        return {"reward": 1.0}


def test_defaults_and_declared_hooks_through_a_wrapper():
    assert hooks(Plain()) == LossHooks()
    wrapped = nn.Module()
    wrapped.module = WithHooks()  # as DDP keeps it
    h = hooks(wrapped)
    assert (h.unit, h.has_eval_loss, h.batch_repeats) == ("prompts", False, 3)
    assert h.step_metrics() == {"reward": 1.0} and h.checkpoint_state is None
    assert isinstance(Plain(), LossModule) and not isinstance(nn.Linear(2, 2), LossModule)


def test_the_loop_reads_no_hook_by_getattr():
    """Every optional hook the training package reads is a field of LossHooks."""
    names = {f for f in LossHooks.__dataclass_fields__}
    bad = []
    for path in (ROOT / "scratchlm" / "training").glob("*.py"):
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr",
                                                                                  "hasattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in names):
                bad.append(f"{path.name}:{node.lineno} reads {node.args[1].value!r}")
    assert not bad, "\n".join(bad)


def test_the_grpo_loss_declares_its_hooks():
    from scratchlm.rl.rollout import GRPOLoss

    declared = {n for n in LossHooks.__dataclass_fields__ if hasattr(GRPOLoss, n)}
    assert {"unit", "has_eval_loss", "batch_repeats", "begin_step", "step_metrics",
            "checkpoint_state", "load_checkpoint_state"} <= declared

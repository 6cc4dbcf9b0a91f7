"""k micro-batches equal one k-times batch for every loss module (the step weights each by
the module's ``batch_weight``: tokens, examples or pairs), and a loss module without
``batch_weight`` is refused by name."""

from __future__ import annotations

import copy

import pytest
import torch

from scratchlm.finetune.classification import ClassificationLoss, add_classifier_head
from scratchlm.finetune.dpo import DPOLoss
from scratchlm.finetune.lora import apply_lora
from scratchlm.finetune.reward import RewardLoss
from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.runtime import setup_runtime
from scratchlm.training.step import train_step

V, T = 97, 12


def tiny(lora=False, head=None):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=V, context_length=32, n_embd=32, n_layer=2, n_head=4,
                              n_kv_head=2, intermediate_size=48))
    if head:
        add_classifier_head(model, head)
    if lora:
        apply_lora(model, rank=4, alpha=8, targets="all")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)  # adapters that already do something
    return model


def ragged_targets(b):
    y = torch.randint(0, V, (b, T))
    for i in range(b):
        y[i, : 2 + 3 * i] = -100  # rows with 10, 7, 4, 1 counted targets
    return y


def pairs_split(x, y):
    """A (2B, ...) batch of B chosen then B rejected rows -> two micro-batches of B/2 pairs."""
    b = x.shape[0] // 2
    first = torch.cat([torch.arange(0, b // 2), torch.arange(b, b + b // 2)])
    second = torch.cat([torch.arange(b // 2, b), torch.arange(b + b // 2, 2 * b)])
    return [(x[first], y[first]), (x[second], y[second])]


def lengths_pairs_split(x, y):
    ids, lengths = x
    b = ids.shape[0] // 2
    first = torch.cat([torch.arange(0, b // 2), torch.arange(b, b + b // 2)])
    second = torch.cat([torch.arange(b // 2, b), torch.arange(b + b // 2, 2 * b)])
    return [((ids[first], lengths[first]), y[first]), ((ids[second], lengths[second]), y[second])]


def case(name):
    torch.manual_seed(1)
    ids = torch.randint(0, V, (4, T))
    if name == "causal-lm":
        model = tiny()
        return model, CausalLMLoss, (ids, ragged_targets(4)), lambda x, y: [
            (x[:1], y[:1]), (x[1:], y[1:])]  # 1 + 3 rows: very different token counts
    if name == "dpo":
        model = tiny(lora=True)
        x = torch.randint(0, V, (8, T))  # 4 pairs
        y = torch.cat([ragged_targets(4), torch.randint(0, V, (4, T))])  # pairs of 22 ... 13
        return model, DPOLoss, (x, y), pairs_split
    lengths = torch.tensor([12, 5, 9, 3])
    if name == "classifier":
        model = tiny(lora=True, head=3)
        labels = torch.tensor([0, 2, 1, 2])
        return model, ClassificationLoss, ((ids, lengths), labels), lambda x, y: [
            ((x[0][:1], x[1][:1]), y[:1]), ((x[0][1:], x[1][1:]), y[1:])]
    model = tiny(lora=True, head=1)  # reward: 2 pairs
    return model, RewardLoss, ((ids, lengths), torch.zeros(4)), lengths_pairs_split


@pytest.mark.parametrize("name", ["causal-lm", "dpo", "classifier", "reward"])
def test_micro_batches_equal_one_batch(name):
    rt = setup_runtime("fp32", "cpu")
    model, loss_cls, (x, y), split = case(name)
    other = copy.deepcopy(model)
    results = []
    for m, batches in ((model, [(x, y)]), (other, split(x, y))):
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
        results.append(train_step(loss_cls(m), opt, batches, rt, grad_clip=None))
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-6)
    assert results[0].tokens == results[1].tokens
    for (n, p), q in zip(model.named_parameters(), other.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def test_the_units_are_tokens_examples_and_pairs():
    x = torch.randint(0, V, (4, T))
    y = ragged_targets(4)
    assert CausalLMLoss(tiny()).batch_weight(x, y) == 10 + 7 + 4 + 1
    assert DPOLoss(tiny(lora=True)).batch_weight(x, y) == 2
    assert ClassificationLoss(tiny(head=2)).batch_weight((x, None), torch.zeros(4)) == 4
    assert RewardLoss(tiny(head=1)).batch_weight((x, None)) == 2


def test_a_loss_module_without_batch_weight_is_refused():
    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, y):
            return (self.w * x).mean()

    m = Bare()
    with pytest.raises(TypeError, match="Bare has no batch_weight"):
        train_step(m, torch.optim.SGD(m.parameters(), lr=0.1), [(torch.ones(2), torch.ones(2))],
                   setup_runtime("fp32", "cpu"))

"""Padding-free SFT batches: the examples of a batch side by side in rows with a document mask
give the loss and the gradients of the padded batch (1e-5), with fewer positions computed."""

from __future__ import annotations

import pytest
import torch

from scratchlm.data.instruction import instruction_collate, packed_instruction_collate
from scratchlm.models.registry import build_model, preset
from scratchlm.training.losses import CausalLMLoss


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, 500, (n,), generator=g).tolist()
        mask = [0] * (n // 3) + [1] * (n - n // 3)  # the prompt's targets masked
        out.append((ids, mask))
    return out


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "gemma3-tiny"])
def test_packed_batches_give_the_padded_loss_and_gradients(name):
    torch.manual_seed(0)
    model = build_model(preset(name)[1])
    batch = _batch([40, 7, 12, 25, 9, 30, 3, 18])
    grads = []
    losses = []
    for collate in (instruction_collate, packed_instruction_collate):
        model.zero_grad()
        x, y = collate(batch, pad_id=0, allowed_max_length=36)
        loss = CausalLMLoss(model)(x, y)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_rows_hold_whole_examples_and_fewer_positions():
    batch = _batch([40, 7, 12, 25, 9, 30, 3, 18])
    (x, seg), y = packed_instruction_collate(batch, pad_id=0)
    padded_x, padded_y = instruction_collate(batch, pad_id=0)
    assert x.shape == (1, sum(n - 1 for n in [40, 7, 12, 25, 9, 30, 3, 18]))  # one row
    assert x.numel() < padded_x.numel() / 2  # no padding at all
    assert sorted(t for t in y.flatten().tolist() if t != -100) == \
        sorted(t for t in padded_y.flatten().tolist() if t != -100)
    for i, (ids, _) in enumerate(batch):  # each example whole, in one row
        r, cols = (seg == i).nonzero(as_tuple=True)
        assert r.unique().numel() == 1 and x[r, cols].tolist() == ids[:-1]


def test_rows_are_at_most_the_width_or_the_longest_example():
    batch = _batch([40, 7, 12, 25, 9, 30, 3, 18])
    (x, seg), y = packed_instruction_collate(batch, pad_id=0, width=30)
    assert x.shape[1] == 39 and x.shape[0] == 4  # the longest example sets the width
    assert sorted(seg.unique().tolist()) == list(range(9))  # 8 examples and the padding

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


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "gemma3-tiny", "gemma4-tiny"])
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
    assert sorted(seg.unique().tolist()) == list(range(-1, 8))  # 8 examples and padding (-1)


def test_chat_sets_as_they_are_published(tmp_path):
    """OpenAI messages and ShareGPT conversations, multi-turn, in JSONL.zst and parquet."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from scratchlm.data.instruction import read_examples

    openai = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."},
                           {"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4"}]}
    sharegpt = {"conversations": [{"from": "human", "value": "Hi"},
                                  {"from": "gpt", "value": "Hello."}]}
    lines = (json.dumps(openai) + "\n" + json.dumps(sharegpt) + "\n").encode()
    (tmp_path / "chat.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist([openai]), tmp_path / "chat.parquet")
    a, b = read_examples(tmp_path / "chat.jsonl.zst")
    assert a.messages == openai["messages"] and a.response == "4"
    assert b.messages == [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello."}]
    (c,) = read_examples(tmp_path / "chat.parquet")
    assert c.messages == openai["messages"]
    bad = {"conversations": [{"from": "robot", "value": "x"}]}
    (tmp_path / "bad.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress((json.dumps(bad) + "\n").encode()))
    with pytest.raises(ValueError, match=r"bad.jsonl.zst:1: turn 0 needs a 'from'"):
        read_examples(tmp_path / "bad.jsonl.zst")


def test_several_sets_mix_with_weights(tmp_path):
    """Each set is split on its own; its training part counts WEIGHT times an epoch."""
    import json

    from scratchlm.finetune.setup import load_splits

    for name in ("a", "b"):
        rows = [{"instruction": f"{name}{i}", "input": "", "output": "x"} for i in range(40)]
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    train, val, test = load_splits([f"{tmp_path / 'a.json'}:2", f"{tmp_path / 'b.json'}:0.5"],
                                   None, None)
    a = [e for e in train if e.instruction.startswith("a")]
    b = [e for e in train if e.instruction.startswith("b")]
    assert len(a) == 2 * 34 and len(b) == 17  # 85% of 40 = 34 each, a twice, half of b
    assert len(test) == 8 and len(val) == 4  # both sets' held-out parts, once
    one, _, _ = load_splits(str(tmp_path / "a.json"), None, None)
    assert len(one) == 34


def test_packed_dpo_pairs_give_the_padded_loss_and_gradients():
    from scratchlm.data.instruction import PreferenceCollate
    from scratchlm.finetune.dpo import DPOLoss

    torch.manual_seed(0)
    model = build_model(preset("llama-tiny")[1])
    chosen, rejected = _batch([30, 9, 14, 22], seed=1), _batch([12, 25, 7, 18], seed=2)
    pairs = list(zip(chosen, rejected))
    results = []
    for packed in (False, True):
        model.zero_grad()
        loss_module = DPOLoss(model, beta=0.5, reference="copy")
        with torch.no_grad():  # a policy that differs from its reference: a margin to match
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        x, y = PreferenceCollate(0, 64, packed=packed)(pairs)
        loss = loss_module(x, y)
        loss.backward()
        results.append((loss.detach(), loss_module.batch_weight(x, y),
                        [p.grad.clone() for p in model.parameters()]))
        with torch.no_grad():  # back to the same weights for the other side
            torch.manual_seed(0)
            fresh = build_model(preset("llama-tiny")[1])
            model.load_state_dict(fresh.state_dict())
    (a, na, ga), (b, nb, gb) = results
    assert na == nb == 4 and abs(a.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # A random model's answers score about -1,000 nats each, summed in float32 in another
    # order (per row vs per segment): 1e-4 apart, which the reward differences carry into the
    # gradients at 4e-5 of their size (the same in float64 models: the sums are float32).
    for x, y in zip(ga, gb):
        assert (x - y).norm() <= 1e-4 * x.norm() + 1e-7


def test_packed_reward_pairs_give_the_padded_loss_and_gradients():
    from scratchlm.data.instruction import RewardCollate
    from scratchlm.finetune.classification import prepare_head_finetuning
    from scratchlm.finetune.reward import RewardLoss

    torch.manual_seed(0)
    model = build_model(preset("llama-tiny")[1])
    prepare_head_finetuning(model, 1, "all")
    chosen, rejected = _batch([30, 9, 14, 22], seed=1), _batch([12, 25, 7, 18], seed=2)
    pairs = list(zip(chosen, rejected))
    results = []
    for packed in (False, True):
        model.zero_grad()
        x, y = RewardCollate(0, 64, packed=packed)(pairs)
        loss = RewardLoss(model)(x, y)
        loss.backward()
        results.append((loss.detach(), RewardLoss(model).batch_weight(x, y),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (a, na, ga), (b, nb, gb) = results
    assert na == nb == 4
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)

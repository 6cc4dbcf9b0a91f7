"""DPO: the loss formula, ln 2 at the start, the LoRA-off reference, and that training raises
preference accuracy on the training pairs."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.data.instruction import Example, PreferenceCollate, PreferenceDataset
from scratchlm.finetune.dpo import DPOLoss, dpo_loss, evaluate_preferences, sequence_logprobs
from scratchlm.finetune.lora import apply_lora
from scratchlm.models.gpt import GPT, GPTConfig


def test_dpo_loss_hand_computed():
    # rewards: chosen -1 - (-1.5) = 0.5, rejected -2 - (-1.5) = -0.5; logit 0.1 * 1.0
    loss, ch, rj = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                            torch.tensor([-1.5]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-6)
    assert (ch.item(), rj.item()) == pytest.approx((0.05, -0.05))
    # pair 1 moved the wrong way (rewards -1 and +1: logit 0.5 * -2), pair 2 did not move
    loss, _, _ = dpo_loss(torch.tensor([-3.0, -1.0]), torch.tensor([-1.0, -1.0]),
                          torch.tensor([-2.0, -1.0]), torch.tensor([-2.0, -1.0]), beta=0.5)
    expected = (math.log(1 + math.exp(1.0)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sequence_logprobs_sums_unmasked_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[1, 2, -100, -100], [-100, 3, 4, 5]])
    logp = torch.log_softmax(logits, -1)
    want = torch.stack([logp[0, 0, 1] + logp[0, 1, 2], logp[1, 1, 3] + logp[1, 2, 4] + logp[1, 3, 5]])
    torch.testing.assert_close(sequence_logprobs(logits, targets), want)


class ByteTok:
    eos_id = 0

    def encode(self, text, allowed_special=()):
        return [b + 1 for b in text.encode()]


def pairs(n=8):
    out = []
    for i in range(n):
        q = f"Say {i}"
        out.append(Example([{"role": "user", "content": q}, {"role": "assistant", "content": "x"}],
                           chosen=f"Certainly: {i}.", rejected=f"No way {i}!"))
    return out


def test_dpo_starts_at_ln2_and_training_raises_accuracy():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=260, context_length=256, n_embd=32, n_layer=2, n_head=2,
                          drop_rate=0.0))
    apply_lora(model, rank=4, alpha=8, targets="all")
    ds = PreferenceDataset(pairs(), ByteTok())
    batch = PreferenceCollate(0)([ds[i] for i in range(len(ds))])
    loss_module = DPOLoss(model, beta=0.5)  # reference: the same model, adapters off
    start = evaluate_preferences(loss_module, [batch], torch.device("cpu"))
    assert start.loss == pytest.approx(math.log(2), abs=1e-6)
    assert start.margin == pytest.approx(0.0, abs=1e-6)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(15):
        loss = loss_module(*batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    end = evaluate_preferences(loss_module, [batch], torch.device("cpu"))
    assert end.loss < 0.3 and end.accuracy == 1.0 and end.margin > 1.0


def test_full_model_dpo_needs_a_reference():
    model = GPT(GPTConfig(vocab_size=260, context_length=256, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="reference"):
        DPOLoss(model)
    loss_module = DPOLoss(model, reference="copy")
    ds = PreferenceDataset(pairs(2), ByteTok())
    batch = PreferenceCollate(0)([ds[0], ds[1]])
    assert loss_module(*batch).item() == pytest.approx(math.log(2), abs=1e-6)
    assert not any(p.requires_grad for p in loss_module._reference[0].parameters())

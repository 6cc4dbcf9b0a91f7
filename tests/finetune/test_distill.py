"""Knowledge distillation: the loss by hand, masking, the student's initialisation, and the
recipe end to end (a 4-layer teacher -> 2-layer student on the-verdict)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.finetune.distill import (DistillationLoss, distillation_loss,
                                        student_from_teacher)
from scratchlm.models.gpt import GPT, GPTConfig


def test_loss_by_hand_classification():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2])
    T, alpha = 2.0, 0.3
    ce = F.cross_entropy(s, y).item()
    kl = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(v / T) for v in srow)
        zt = sum(math.exp(v / T) for v in trow)
        for a, b in zip(srow, trow):
            pt, ps = math.exp(b / T) / zt, math.exp(a / T) / zs
            kl += pt * math.log(pt / ps)
    expected = alpha * ce + (1 - alpha) * T * T * kl / 2
    assert distillation_loss(s, t, y, alpha, T).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(s, t, y, 1.0, T).item() == pytest.approx(ce, rel=1e-6)
    assert distillation_loss(s, s, y, 0.0, T).item() == pytest.approx(0.0, abs=1e-6)


def test_causal_loss_ignores_masked_positions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    y[0, :2] = -100
    keep = y != -100
    full = distillation_loss(s, t, y)
    only = distillation_loss(s[keep][None], t[keep][None], y[keep][None])
    assert full.item() == pytest.approx(only.item(), rel=1e-6)
    t2 = t.clone()
    t2[0, :2] += 5.0  # a masked position's teacher logits do not matter
    assert distillation_loss(s, t2, y).item() == pytest.approx(full.item(), rel=1e-6)
    with pytest.raises(ValueError, match="vocabulary"):
        distillation_loss(s, t[..., :10], y)


def test_student_from_teacher_takes_every_other_block():
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=50, context_length=16, n_embd=16, n_head=2, n_layer=4))
    student = student_from_teacher(teacher, 2)
    assert student.cfg.n_layer == 2
    for si, ti in [(0, 0), (1, 2)]:
        for (_, a), (_, b) in zip(student.trf_blocks[si].state_dict().items(),
                                  teacher.trf_blocks[ti].state_dict().items()):
            assert torch.equal(a, b)
    assert torch.equal(student.tok_emb.weight, teacher.tok_emb.weight)
    with pytest.raises(ValueError, match="1 to 3 layers"):
        student_from_teacher(teacher, 4)
    other = GPT(GPTConfig(vocab_size=51, context_length=16, n_embd=16, n_head=2, n_layer=2))
    with pytest.raises(ValueError, match="same tokenizer"):
        DistillationLoss(other, teacher)


def test_distill_recipe_end_to_end(tmp_path):
    from scratchlm.recipes.distill import DistillConfig, main as distill
    from scratchlm.recipes.pretrain import PretrainConfig, main as pretrain
    from scratchlm.training.loop import TrainConfig

    small = dict(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=15,
                 save_every=30, log_every=5, eval_batches=4, tensorboard=False)
    pretrain(PretrainConfig(model="gpt-tiny", data=["the-verdict"], out=str(tmp_path / "t"),
                            n_layer=4, context_length=32, sample_tokens=0,
                            train=TrainConfig(**small)))
    res = distill(DistillConfig(teacher=str(tmp_path / "t" / "final"), student_layers=2,
                                data=["the-verdict"], out=str(tmp_path / "s"),
                                context_length=32, train=TrainConfig(**small)))
    saved = json.loads((tmp_path / "s" / "result.json").read_text())
    assert saved == pytest.approx(res)
    assert res["student_val_ppl"] < res["student_val_ppl_before"]
    assert 0.5 < res["size_ratio"] < 1 and res["speedup"] > 0
    from scratchlm.checkpoints.load import load_pretrained

    assert load_pretrained(str(tmp_path / "s" / "final")).cfg.n_layer == 2


@pytest.mark.parametrize("temperature,alpha", [(2.0, 0.5), (1.0, 0.3), (4.0, 0.0)])
def test_fused_distillation_equals_the_plain_loss(temperature, alpha):
    """The chunked head+loss of nn/loss.py: same value and gradients as logits + loss."""
    from scratchlm.nn.loss import linear_distillation_loss

    torch.manual_seed(0)
    h = torch.randn(70, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    th, tw = torch.randn(70, 12), torch.randn(50, 12)
    y = torch.randint(0, 50, (70,))
    y[:9] = -100
    plain = distillation_loss(h @ w.T, th @ tw.T, y, alpha, temperature)
    gh, gw = torch.autograd.grad(plain, (h, w))
    fused = linear_distillation_loss(h, w, th, tw, y, alpha, temperature, chunk=32)
    fh, fw = torch.autograd.grad(fused, (h, w))
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.testing.assert_close(fh, gh, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fw, gw, atol=1e-5, rtol=1e-4)

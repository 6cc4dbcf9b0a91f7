"""Schedules, optimizer groups, the step (accumulation, clipping), configs."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.training.config import TrainConfig
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.optim import param_groups
from scratchlm.training.runtime import setup_runtime
from scratchlm.training.schedule import lr_at
from scratchlm.training.step import train_step


def test_schedules():
    kw = dict(lr=1.0, max_steps=110, warmup_steps=10, min_lr=0.1)
    assert [lr_at(s, schedule="constant", **kw) for s in (0, 4, 9, 10, 109)] == \
        [0.1, 0.5, 1.0, 1.0, 1.0]
    assert lr_at(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.55)  # halfway: mean of ends
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(35, schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_at(110, schedule="linear", **kw) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, schedule="step", **kw)


def book_appendix_d_lrs(total_steps, initial_lr=0.0001, peak_lr=0.01):
    """The book's appendix D loop (warm-up from initial_lr, then cosine), step by step."""
    warmup_steps = int(0.2 * total_steps)
    min_lr = 0.1 * initial_lr
    lr_increment = (peak_lr - initial_lr) / warmup_steps
    lrs = []
    for global_step in range(total_steps):
        if global_step < warmup_steps:
            lr = initial_lr + global_step * lr_increment
        else:
            progress = ((global_step - warmup_steps) / (total_steps - warmup_steps))
            lr = min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        lrs.append(lr)
    return lrs


def test_the_books_warmup_from_initial_lr_then_cosine():
    from scratchlm.training.loop import TrainConfig
    from scratchlm.training.schedule import warmup_steps_of

    total = 9 * 15  # the book: len(train_loader) = 9 batches, 15 epochs
    cfg = TrainConfig(max_steps=total, lr=0.01, min_lr=0.00001, initial_lr=0.0001,
                      warmup_fraction=0.2, schedule="cosine")
    assert warmup_steps_of(cfg) == 27
    ours = [lr_at(s, schedule="cosine", lr=cfg.lr, max_steps=total, min_lr=cfg.min_lr,
                  warmup_steps=warmup_steps_of(cfg), initial_lr=cfg.initial_lr)
            for s in range(total)]
    assert ours == pytest.approx(book_appendix_d_lrs(total), rel=1e-12)
    assert ours[0] == pytest.approx(0.0001) and max(ours) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="initial_lr"):
        TrainConfig(lr=0.01, initial_lr=0.1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainConfig(warmup_fraction=1.5)


def test_no_decay_on_norms_biases_embeddings():
    model = GPT(GPTConfig(vocab_size=64, context_length=8, n_embd=16, n_layer=1, n_head=2))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {
        "trf_blocks.0.att.qkv.weight", "trf_blocks.0.att.out_proj.weight",
        "trf_blocks.0.ff.layers.0.weight", "trf_blocks.0.ff.layers.2.weight"}
    assert "tok_emb.weight" in {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0


def _setup(seed=0):
    """A tiny model and plain SGD with lr 1, so each update equals the gradient."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=64, context_length=8, n_embd=16, n_layer=2, n_head=2))
    return model, torch.optim.SGD(model.parameters(), lr=1.0)


@pytest.mark.parametrize("fused", [True, False])
def test_accumulation_equals_one_big_batch(fused):
    rt = setup_runtime("fp32", "cpu")
    x = torch.randint(0, 64, (4, 8))
    y = torch.randint(0, 64, (4, 8))
    y[0, :5] = -100  # uneven valid counts: the weighting must still match
    a, opt_a = _setup()
    b, opt_b = _setup()
    ra = train_step(CausalLMLoss(a, fused), opt_a, [(x, y)], rt, grad_clip=None)
    rb = train_step(CausalLMLoss(b, fused), opt_b, [(x[:1], y[:1]), (x[1:3], y[1:3]), (x[3:], y[3:])],
                    rt, grad_clip=None)
    assert ra.loss == pytest.approx(rb.loss, abs=1e-6) and ra.tokens == rb.tokens == 27
    assert ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_clipping_bounds_the_update():
    rt = setup_runtime("fp32", "cpu")
    model, opt = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 64, (2, 8))
    res = train_step(CausalLMLoss(model), opt, [(x, x)], rt, grad_clip=0.01)
    assert res.grad_norm > 0.01  # reported before clipping
    delta = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), before)))
    assert delta.item() == pytest.approx(0.01, rel=1e-4)  # SGD lr 1: step == clipped gradient


def test_config_files_and_flags(tmp_path):
    import argparse

    from scratchlm.config import add_arguments, build
    from scratchlm.recipes.pretrain import PretrainConfig

    f = tmp_path / "run.yaml"
    f.write_text("model: gpt-tiny\ntrain:\n  lr: 1.0e-3\n  max_steps: 7\n")
    p = argparse.ArgumentParser()
    add_arguments(p, PretrainConfig)
    cfg = build(PretrainConfig, p.parse_args(["--train.max_steps", "9", "--data", "a", "b"]), str(f))
    assert cfg.model == "gpt-tiny" and cfg.train.lr == 1e-3 and cfg.train.max_steps == 9
    assert cfg.data == ["a", "b"]
    f.write_text("train:\n  learning_rate: 1.0\n")
    with pytest.raises(ValueError, match="unknown config key 'train.learning_rate'"):
        build(PretrainConfig, p.parse_args([]), str(f))
    with pytest.raises(SystemExit):
        p.parse_args(["--train.nope", "1"])
    f.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ValueError, match="train.max_steps"):
        build(PretrainConfig, p.parse_args([]), str(f))


def test_every_shipped_pretrain_config_file_loads():
    """(Every other command's files: tests/test_commands.py.)"""
    from pathlib import Path

    from scratchlm.config import from_dict, load_file
    from scratchlm.recipes.pretrain import PretrainConfig

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("pretrain-*.yaml"))
    assert len(files) >= 3, "no shipped pretrain configs found"
    for f in files:
        from_dict(PretrainConfig, load_file(f))


def test_nested_flags_keep_the_recipes_own_defaults():
    """--train.lr on a recipe whose TrainConfig default differs from TrainConfig's own defaults
    changes only lr (a recipe's constant schedule must not fall back to cosine)."""
    from scratchlm.config import build
    from scratchlm.recipes.finetune_dpo import DPOConfig

    cfg = build(DPOConfig, {"train.lr": 1e-3, "dpo.beta": 0.5})
    assert (cfg.train.lr, cfg.train.schedule, cfg.train.warmup_steps) == (1e-3, "constant", 0)
    assert cfg.train.batch_size == 4 and cfg.dpo.beta == 0.5


def test_epochs_set_the_steps_unless_max_steps_is_given():
    from scratchlm.training.config import set_epochs

    cfg = TrainConfig(max_steps=0, batch_size=4, eval_every=100)
    assert set_epochs(cfg, 3, 40, world_size=2) == 5  # 40 examples / (4 x 2 ranks)
    assert cfg.max_steps == 15 and cfg.eval_every == 3  # four evaluations at least
    long = TrainConfig(max_steps=0, batch_size=4, eval_every=1000)
    set_epochs(long, 10, 400)
    assert long.eval_every == 100  # once per epoch when that is more often
    given = TrainConfig(max_steps=7, batch_size=4)
    set_epochs(given, 3, 40)
    assert given.max_steps == 7  # --train.max_steps replaces --epochs, as in HF's Trainer
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        TrainConfig(max_steps=-1)

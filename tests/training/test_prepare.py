"""prepare_training: every flag does what it says for every model a recipe trains, or is
refused with a message."""

from __future__ import annotations

import pytest
import torch

from scratchlm.finetune.prompt_tuning import PromptTuned
from scratchlm.models.registry import build_model, preset
from scratchlm.training.loop import TrainConfig
from scratchlm.training.losses import CausalLMLoss
from scratchlm.training.prepare import core_model, prepare_training
from scratchlm.training.runtime import setup_runtime


@pytest.mark.parametrize("name", ["gpt-tiny", "llama-tiny", "qwen3-tiny", "gemma3-tiny",
                                  "gemma4-tiny"])
def test_grad_checkpointing_reaches_the_blocks_and_gives_the_same_gradients(name):
    rt = setup_runtime("fp32", "cpu")
    torch.manual_seed(0)
    model = build_model(preset(name)[1])
    plain = build_model(preset(name)[1])
    plain.load_state_dict(model.state_dict())
    loss = prepare_training(CausalLMLoss(model), model, rt, TrainConfig(grad_checkpointing=True))
    assert model.cfg.grad_checkpointing and loss.model is model
    x = torch.randint(0, model.cfg.vocab_size, (2, 16))
    loss(x, x).backward()
    CausalLMLoss(plain)(x, x).backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_a_prompt_tuned_wrapper_reaches_its_model():
    rt = setup_runtime("fp32", "cpu")
    base = build_model(preset("llama-tiny")[1])
    tuned = PromptTuned(base, 4)
    assert core_model(tuned) is base
    prepare_training(CausalLMLoss(tuned), tuned, rt, TrainConfig(grad_checkpointing=True))
    assert base.cfg.grad_checkpointing


def test_flags_that_cannot_apply_are_refused():
    rt = setup_runtime("fp32", "cpu")
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="--train.compile: Linear has no transformer blocks"):
        prepare_training(lin, lin, rt, TrainConfig(compile=True))
    with pytest.raises(ValueError, match="--train.grad_checkpointing: Linear"):
        prepare_training(lin, lin, rt, TrainConfig(grad_checkpointing=True))
    with pytest.raises(ValueError, match="--train.strategy must be one of"):
        prepare_training(lin, lin, rt, TrainConfig(strategy="zero3"))

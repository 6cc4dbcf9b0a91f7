"""The depth dial (training/depth.py) and its use by the pretraining recipe."""

from __future__ import annotations

import json
import math

import pytest

from scratchlm.models.gpt import GPTConfig
from scratchlm.models.llama import LlamaConfig
from scratchlm.training.depth import horizon, lr_scale, shape_of


def test_shapes_follow_the_depth():
    assert shape_of(12, GPTConfig.__dataclass_fields__) == {
        "n_layer": 12, "n_embd": 768, "n_head": 6}
    llama = shape_of(4, LlamaConfig.__dataclass_fields__)
    assert llama == {"n_layer": 4, "n_embd": 256, "n_head": 2, "n_kv_head": 2, "head_dim": 128,
                     "intermediate_size": 704}  # 8/3 * 256 = 682.7, rounded up to 64
    assert shape_of(20, LlamaConfig.__dataclass_fields__)["n_head"] == 10  # 1280 / 128
    for depth in (1, 3, 5, 9):  # a width that is no multiple of 128: heads of 64
        shape = shape_of(depth, LlamaConfig.__dataclass_fields__)
        assert shape["n_head"] * shape["head_dim"] == shape["n_embd"] and shape["head_dim"] == 64
        LlamaConfig(**shape)  # a valid config
        GPTConfig(**shape_of(depth, GPTConfig.__dataclass_fields__))
    assert lr_scale(768) == 1.0 and lr_scale(192) == 2.0
    h = horizon(1_000_000, 4096, 20)
    assert h.steps == math.ceil(20e6 / 4096) and h.tokens >= 20e6


def test_pretrain_with_the_dial(tmp_path, capsys):
    from scratchlm.recipes.pretrain import PretrainConfig, main
    from scratchlm.training.loop import TrainConfig

    train = TrainConfig(batch_size=2, lr=1e-3, eval_every=100, save_every=100, warmup_steps=0,
                        tensorboard=False, optimizer="muon")
    cfg = PretrainConfig(model="llama-tiny", depth=2, tokens_per_param=0.0001,
                         data=["the-verdict"], context_length=32, sample_tokens=0,
                         out=str(tmp_path / "run"), train=train)
    res = main(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    model = saved["model_config"]
    assert (model["n_layer"], model["n_embd"], model["n_head"]) == (2, 128, 1)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "depth 2: 2 layers, 128 wide, 1 heads" in text and "compute:" in text
    params = int(text.split("model: ")[1].split(" parameters")[0].replace(",", ""))
    steps = math.ceil(0.0001 * params / (2 * 32))
    assert saved["train"]["max_steps"] == steps == len(res.train_losses)
    assert saved["train"]["lr"] == pytest.approx(1e-3 * math.sqrt(768 / 128))


def test_the_dial_refuses_a_shape_given_beside_it(tmp_path):
    from scratchlm.recipes.pretrain import PretrainConfig, main

    with pytest.raises(ValueError, match="--depth sets the shape; leave out --n_layer"):
        main(PretrainConfig(model="llama-tiny", depth=2, n_layer=3, out=str(tmp_path / "r")))

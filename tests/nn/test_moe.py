"""The mixture-of-experts feed-forward: equal to the dense FFN when the experts are equal, equal
to Hugging Face's Mixtral (block, auxiliary loss, whole model), capacity and finetuning."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.nn.feedforward import FeedForward, SwiGLU
from scratchlm.nn.moe import (MoEFeedForward, freeze_for_moe_finetuning, moe_aux_loss,
                              moe_stats)
from scratchlm.training.losses import CausalLMLoss


def copy_dense_into_experts(dense_model, moe_model):
    """moe_model's weights = dense_model's, each expert a copy of the dense FFN."""
    state = moe_model.state_dict()
    for k, v in dense_model.state_dict().items():
        if ".ff." in k:
            head, tail = k.split(".ff.")
            for e in range(moe_model.cfg.moe.num_experts):
                state[f"{head}.ff.experts.{e}.{tail}"] = v
        else:
            state[k] = v
    moe_model.load_state_dict(state)


@pytest.mark.parametrize("dense", [lambda: FeedForward(16), lambda: SwiGLU(16, 24)])
@pytest.mark.parametrize("top_k", [1, 2])
def test_identical_experts_equal_the_dense_ffn(dense, top_k):
    torch.manual_seed(0)
    ffn = dense()
    moe = MoEFeedForward(16, 4, top_k, dense)
    for expert in moe.experts:
        expert.load_state_dict(ffn.state_dict())
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x), ffn(x), atol=1e-6, rtol=1e-5)


def test_top1_gpt_with_identical_experts_equals_dense_gpt():
    torch.manual_seed(0)
    base = dict(vocab_size=97, context_length=32, n_embd=32, n_head=4, n_layer=2)
    dense = GPT(GPTConfig(**base)).eval()
    moe = GPT(GPTConfig(**base, moe={"num_experts": 4, "top_k": 1})).eval()
    copy_dense_into_experts(dense, moe)
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(moe(x), dense(x), atol=1e-5, rtol=1e-5)


def test_experts_differ_so_routing_matters():
    """A check on the check: with distinct experts the MoE is not the dense FFN."""
    torch.manual_seed(0)
    ffn = FeedForward(16)
    moe = MoEFeedForward(16, 4, 1, lambda: FeedForward(16))
    moe.experts[0].load_state_dict(ffn.state_dict())
    x = torch.randn(2, 9, 16)
    assert not torch.allclose(moe(x), ffn(x), atol=1e-3)


transformers = pytest.importorskip("transformers")


def mixtral(num_experts=4, top_k=2, tie=False):
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=num_experts,
        num_experts_per_tok=top_k, max_position_embeddings=128, rope_theta=50000.0,
        tie_word_embeddings=tie, rms_norm_eps=1e-5, sliding_window=None)
    hf = transformers.MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
    ours = Llama(LlamaConfig(vocab_size=300, context_length=128, n_embd=64, n_layer=2,
                             n_head=4, n_kv_head=2, intermediate_size=96, rope_base=50000.0,
                             tie_embeddings=tie,
                             moe={"num_experts": num_experts, "top_k": top_k})).eval()
    ours.load_state_dict(mixtral_to_ours(hf.state_dict(), num_experts))
    return hf, ours


def mixtral_to_ours(sd, num_experts):
    from scratchlm.models.convert.hf_llama import hf_key_to_ours

    out = {}
    for k, v in sd.items():
        if ".mlp." not in k:
            out[hf_key_to_ours(k)] = v
            continue
        layer = k.split(".")[2]
        pre = f"trf_blocks.{layer}.ff"
        if k.endswith("mlp.gate.weight"):
            out[f"{pre}.router.weight"] = v
        elif k.endswith("gate_up_proj"):
            for e in range(num_experts):
                gate, up = v[e].chunk(2, dim=0)
                out[f"{pre}.experts.{e}.fc1.weight"] = gate
                out[f"{pre}.experts.{e}.fc2.weight"] = up
        elif k.endswith("down_proj"):
            for e in range(num_experts):
                out[f"{pre}.experts.{e}.fc3.weight"] = v[e]
    return out


@pytest.mark.parametrize("num_experts,top_k", [(4, 2), (8, 2), (4, 1), (4, 3)])
def test_llama_moe_logits_match_mixtral(num_experts, top_k):
    hf, ours = mixtral(num_experts, top_k)
    x = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_moe_block_matches_mixtral_block_and_load_balancing_loss():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    hf, ours = mixtral(4, 2)
    hf_block, our_block = hf.model.layers[0].mlp, ours.trf_blocks[0].ff
    x = torch.randn(3, 11, 64)
    with torch.no_grad():
        torch.testing.assert_close(our_block(x), hf_block(x), atol=1e-5, rtol=1e-5)
        logits = hf_block.gate(x)[0]
    our_block.aux_loss_coef, our_block.z_loss_coef = 1.0, 0.0
    our_block(x)
    expected = load_balancing_loss_func((logits,), num_experts=4, top_k=2)
    torch.testing.assert_close(moe_aux_loss(our_block), expected)
    # router z-loss: mean over tokens of logsumexp(logits)^2, by hand
    our_block.aux_loss_coef, our_block.z_loss_coef = 0.0, 1.0
    our_block(x)
    assert moe_aux_loss(our_block) is not None and moe_aux_loss(our_block) is None  # taken once
    our_block(x)
    z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist())
    assert our_block.last_aux_loss.item() == pytest.approx(z / logits.shape[0], rel=1e-5)


def test_capacity_drops_overflow_in_slot_order():
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 2, 1, lambda: FeedForward(8), capacity_factor=1.0)
    with torch.no_grad():  # route every token to expert 0
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0
    x = torch.randn(1, 6, 8)
    x[..., 0] = 1.0
    assert moe.capacity(6) == 3
    y = moe(x)[0]
    expected = moe.experts[0](x[0, :3])
    torch.testing.assert_close(y[:3], expected)  # the first three get the expert ...
    assert torch.equal(y[3:], torch.zeros(3, 8))  # ... the overflow passes on unchanged
    stats = moe_stats(moe)
    assert stats["dropped_frac"] == pytest.approx(0.5)
    assert stats["expert_share"] == [1.0, 0.0]
    assert moe_stats(moe)["dropped_frac"] == 0.0  # counters were reset


def test_aux_loss_trains_the_router_and_is_logged(tmp_path):
    from scratchlm.training.loop import TrainConfig, fit
    from scratchlm.training.runtime import setup_runtime

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, context_length=16, n_embd=32, n_head=2, n_layer=2,
                          moe={"num_experts": 4, "top_k": 2}))
    loss_module = CausalLMLoss(model)
    x = torch.randint(0, 64, (4, 16))
    plain = CausalLMLoss(model)(x, x)
    assert moe_stats(model)["aux_loss"] > 0
    import copy

    copy.deepcopy(model)  # no autograd graph left on the module
    model.eval()
    with torch.no_grad():
        assert loss_module(x, x) < plain  # evaluation: cross-entropy only
    model.train()
    loss_module(x, x).backward()
    assert model.trf_blocks[0].ff.router.weight.grad.abs().sum() > 0

    data = [(torch.randint(0, 64, (16,)), torch.randint(0, 64, (16,))) for _ in range(16)]
    cfg = TrainConfig(max_steps=4, batch_size=4, log_every=2, eval_every=4, save_every=4,
                      tensorboard=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fit(model, loss_module, opt, data, None, cfg, setup_runtime("fp32", "cpu"), tmp_path, {})
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r["expert_share"]]
    assert len(rows) == 2
    shares = [float(s) for s in rows[-1]["expert_share"].split()]
    assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=1e-3)
    assert float(rows[-1]["moe_aux_loss"]) > 0


def test_freeze_for_moe_finetuning_trains_router_and_chosen_experts():
    model = GPT(GPTConfig(vocab_size=64, context_length=16, n_embd=32, n_head=2, n_layer=2,
                          moe={"num_experts": 4}))
    freeze_for_moe_finetuning(model, experts=[1, 3])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "trf_blocks.0.ff.router.weight" in trainable
    assert any(n.startswith("trf_blocks.1.ff.experts.3.") for n in trainable)
    assert not any(".experts.0." in n or ".experts.2." in n or "att" in n for n in trainable)
    with pytest.raises(ValueError, match="out of range"):
        freeze_for_moe_finetuning(model, experts=[4])
    with pytest.raises(ValueError, match="no mixture-of-experts"):
        freeze_for_moe_finetuning(GPT(GPTConfig.from_name("gpt-tiny")))
    with pytest.raises(ValueError, match="moe.top_k"):
        GPTConfig(moe={"num_experts": 2, "top_k": 3})


def test_moe_train_flag_of_the_instruct_recipe():
    from scratchlm.recipes.finetune_instruct import parse_moe_train

    assert parse_moe_train("router") == [] and parse_moe_train("router, 0,3") == [0, 3]
    for bad in ("experts", "router,x", "0,1"):
        with pytest.raises(ValueError, match="moe_train"):
            parse_moe_train(bad)

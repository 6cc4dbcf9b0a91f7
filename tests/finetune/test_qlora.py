from __future__ import annotations

import pytest
import torch

from scratchlm.finetune.lora import LoRALinear, apply_lora
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.nn.loss import cross_entropy
from scratchlm.nn.nf4 import NF4_LEVELS, NF4Linear, dequantize_nf4, quantize_nf4, weight_bytes


def test_nf4_round_trip_error_is_bounded():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    packed, absmax = quantize_nf4(w)
    assert packed.dtype == torch.uint8 and packed.numel() == w.numel() // 2
    back = dequantize_nf4(packed, absmax, w.shape)
    gaps = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max()
    blocks = w.reshape(-1, 64)
    err = (back.reshape(-1, 64) - blocks).abs()
    assert (err <= gaps / 2 * blocks.abs().amax(1, keepdim=True) + 1e-6).all()
    # levels are exact: every block's absmax value comes back exactly
    assert torch.allclose(back.reshape(-1, 64).abs().amax(1), blocks.abs().amax(1))


def test_qlora_trains_adapters_on_a_4bit_base():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, context_length=16, n_embd=64, n_layer=2, n_head=2))
    fp32_bytes = weight_bytes(model)
    apply_lora(model, rank=4, alpha=8, targets=("q", "v", "out", "ff"), quantize_base="nf4")
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert lora and all(isinstance(m.quantized, NF4Linear) for m in lora)
    assert weight_bytes(model) < fp32_bytes / 2  # the head stays fp32 here (not targeted)
    x = torch.randint(0, 128, (4, 16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = cross_entropy(model(x), x.roll(-1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    with pytest.raises(ValueError, match="4-bit"):
        lora[0].merge()


def test_double_quantization_shrinks_scales_and_keeps_weights():
    from torch import nn

    from scratchlm.nn.nf4 import dequantize_scales, quantize_scales

    torch.manual_seed(0)
    lin = nn.Linear(256, 512)
    single, double = NF4Linear(lin), NF4Linear(lin, double_quant=True)
    absmax = single.absmax
    codes, scale, mean = quantize_scales(absmax)
    assert codes.dtype == torch.int8 and scale.numel() == (absmax.numel() + 255) // 256
    back = dequantize_scales(codes, scale, mean)
    assert (back - absmax).abs().max() <= scale.max() / 2 + 1e-7  # half an 8-bit step
    # the weight moves by at most that step's share of each block
    w1, w2 = single.dequantized(), double.dequantized()
    assert (w1 - w2).abs().max() <= (scale.max() / 2 + 1e-7)
    bits = lambda m: 8 * sum(b.numel() * b.element_size() for b in m.buffers()) / lin.weight.numel()
    assert bits(single) == pytest.approx(4.5) and bits(double) == pytest.approx(4.127, abs=0.002)
    model = GPT(GPTConfig(vocab_size=128, context_length=16, n_embd=64, n_layer=1, n_head=2))
    apply_lora(model, rank=2, alpha=4, targets="all", quantize_base="nf4-dq")
    assert model(torch.randint(0, 128, (1, 8))).shape == (1, 8, 128)


def test_nf4_is_bitsandbytes_layout_and_its_matmul_agrees():
    """Our NF4 bytes and scales equal bitsandbytes' quantize_4bit (the reference QLoRA
    implementation), and NF4Linear through bitsandbytes.matmul_4bit equals the plain-PyTorch
    path, output and input gradient, with and without double quantization."""
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf

    from scratchlm.nn.nf4 import bitsandbytes

    assert bitsandbytes() is bnb
    torch.manual_seed(0)
    w = torch.randn(96, 128)
    codes, absmax = quantize_nf4(w)
    ref_codes, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(codes, ref_codes.view(-1))
    assert torch.equal(absmax, state.absmax)
    assert torch.equal(dequantize_nf4(codes, absmax, w.shape), bnbf.dequantize_4bit(ref_codes, state))
    for double_quant in (False, True):
        layer = NF4Linear(torch.nn.Linear(128, 96), double_quant=double_quant)
        x = torch.randn(3, 7, 128, requires_grad=True)
        y, ref = layer(x), layer.forward_torch(x)
        assert torch.allclose(y, ref, atol=1e-5)
        g = torch.randn_like(y)
        assert torch.allclose(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                              atol=1e-5)


def test_a_4bit_lora_head_takes_the_plain_loss_path():
    """A LoRA head over an NF4 base has no fused weight: the causal-LM loss falls back to the
    logits (it used to index None), and equals cross-entropy of the model's own logits."""
    from scratchlm.nn.loss import fusable_head
    from scratchlm.training.losses import causal_lm_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, context_length=16, n_embd=64, n_layer=2, n_head=2))
    apply_lora(model, rank=4, alpha=8, targets="all", quantize_base="nf4")
    assert not fusable_head(model.out_head)
    x = torch.randint(0, 128, (2, 16))
    y = torch.roll(x, -1, 1)
    loss = causal_lm_loss(model, x, y)
    torch.testing.assert_close(loss, cross_entropy(model(x), y))
    loss.backward()


def test_nf4_torch_path_takes_bf16_inputs_with_a_bias():
    torch.manual_seed(0)
    layer = NF4Linear(torch.nn.Linear(64, 32))
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    want = torch.nn.functional.linear(x.float(), layer.dequantized(), layer.bias)
    torch.testing.assert_close(layer.forward_torch(x).float(), want, atol=0.1, rtol=0.05)

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.models.accounting import count_parameters, flops_per_token, memory_report
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.nn.feedforward import GELU
from scratchlm.nn.norm import LayerNorm


def test_book_parameter_figures():
    # The book's chapter 4 model: no qkv bias, a separate output head.
    model = GPT(GPTConfig.from_name("gpt2-124m", qkv_bias=False, tie_embeddings=False))
    report = memory_report(model)
    assert report.total_params == 163_009_536
    assert round(report.size_mb, 2) == 621.83
    tied = GPT(GPTConfig.from_name("gpt2-124m", qkv_bias=False))
    assert count_parameters(tied) == 124_412_160
    assert memory_report(tied).params_untied == 163_009_536
    # The published GPT-2 checkpoint has qkv biases.
    assert count_parameters(GPT(GPTConfig.from_name("gpt2-124m"))) == 124_439_808


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="GPTConfig.n_layer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="drop_rate"):
        GPTConfig(drop_rate=1.5)
    with pytest.raises(ValueError, match="unknown GPT preset"):
        GPTConfig.from_name("gpt5")


def test_layernorm_and_gelu_are_the_book_formulas():
    x = torch.randn(4, 8, 16)
    ln = LayerNorm(16)
    with torch.no_grad():
        ln.scale.uniform_()
        ln.shift.uniform_()
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    assert torch.allclose(ln(x), ln.scale * (x - mean) / torch.sqrt(var + 1e-5) + ln.shift,
                          atol=1e-5)
    book = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert torch.allclose(GELU()(x), book, atol=1e-6)


def test_forward_shapes_and_context_limit():
    cfg = GPTConfig.from_name("gpt-tiny")
    model = GPT(cfg)
    out = model(torch.randint(0, cfg.vocab_size, (2, 10)))
    assert out.shape == (2, 10, cfg.vocab_size)
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, cfg.context_length + 1, dtype=torch.long))


def test_vocab_padding_changes_nothing_visible():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=1000, context_length=16, n_embd=32, n_layer=2, n_head=2,
                    vocab_pad_multiple=64)
    model = GPT(cfg)
    assert model.tok_emb.weight.shape[0] == 1024
    x = torch.randint(0, 1000, (2, 16))
    assert model(x).shape == (2, 16, 1000)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=128, context_length=16, n_embd=32, n_layer=2, n_head=2)
    a = GPT(cfg)
    b = GPT(GPTConfig(**{**cfg.to_dict(), "grad_checkpointing": True}))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 128, (2, 16))
    for m in (a, b):
        m.train()
        m(x).logsumexp(-1).mean().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_flops_per_token_formula():
    cfg = GPTConfig.from_name("gpt2-124m")
    fwd, train = flops_per_token(cfg, seq_len=1024)
    n = 12 * 12 * 768**2 + 50257 * 768
    assert fwd == 2 * n + 4 * 12 * 1024 * 768 and train == 3 * fwd
    # close to the usual 6N rule of thumb at this size
    assert 0.9 < train / (6 * count_parameters(GPT(cfg))) < 1.2


def test_tied_gradient_equals_the_sum_of_untied_gradients():
    """The sparse lookup gradient of a tied head adds up to the dense sum of both uses."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=100, context_length=16, n_embd=32, n_layer=1, n_head=2)
    tied = GPT(cfg).train()
    untied = GPT(GPTConfig(**{**cfg.to_dict(), "tie_embeddings": False})).train()
    state = tied.state_dict()
    untied.load_state_dict({**state, "out_head.weight": state["tok_emb.weight"].clone()})
    x = torch.randint(0, 100, (3, 16))
    for m in (tied, untied):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
    g = tied.tok_emb.weight.grad
    assert not g.is_sparse
    want = untied.tok_emb.weight.grad + untied.out_head.weight.grad
    assert torch.allclose(g, want, atol=1e-6)


def test_accounting_takes_a_model_or_its_config():
    cfg = GPTConfig.from_name("gpt2-124m")
    model = GPT(GPTConfig(vocab_size=97, context_length=16, n_embd=32, n_layer=2, n_head=4))
    assert memory_report(model.cfg) == memory_report(model)
    assert flops_per_token(model) == flops_per_token(model.cfg)
    assert memory_report(cfg).total_params == 124_439_808  # built on the meta device

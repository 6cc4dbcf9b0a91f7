from __future__ import annotations

import math

import pytest
import torch

from scratchlm.nn.loss import cross_entropy, linear_cross_entropy, linear_token_logprobs


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # (1, 2, 2)
    targets = torch.tensor([[1, -100]])
    # p(target) = 3 / 4 for the first position; the second is ignored
    assert cross_entropy(logits, targets).item() == pytest.approx(-math.log(0.75))


@pytest.mark.parametrize("block,inner", [(1, 1), (8, 3), (7, 7), (64, 16), (1000, 128)])
def test_linear_cross_entropy_equals_the_plain_loss(block, inner):
    torch.manual_seed(0)
    h = torch.randn(3, 11, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (3, 11))
    t[0, :4] = -100
    plain = cross_entropy(h @ w.T, t)
    plain.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    fused = linear_cross_entropy(h, w, t, block=block, inner=inner)
    (2 * fused).backward()
    assert fused.item() == pytest.approx(plain.item(), abs=1e-5)
    assert torch.allclose(h.grad, 2 * gh, atol=1e-6) and torch.allclose(w.grad, 2 * gw, atol=1e-6)


def test_linear_cross_entropy_with_a_frozen_head():
    h = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(10, 4)  # frozen
    t = torch.randint(0, 10, (8,))
    linear_cross_entropy(h, w, t).backward()
    assert h.grad is not None and w.grad is None


@pytest.mark.parametrize("temperature,chunk", [(1.0, 1), (0.7, 5), (1.3, 64)])
def test_linear_token_logprobs_equal_the_plain_log_softmax(temperature, chunk):
    """Per-token log-probabilities, entropies and both gradients (an upstream gradient that
    differs per row) equal the plain (N, V) log-softmax's."""
    torch.manual_seed(0)
    h = torch.randn(3, 11, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (3, 11))
    upstream = torch.randn(3, 11)
    log_all = torch.log_softmax((h @ w.T) / temperature, -1)
    plain = log_all.gather(-1, t[..., None]).squeeze(-1)
    entropy = -(log_all.exp() * log_all).sum(-1)
    (plain * upstream).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    logp, ent = linear_token_logprobs(h, w, t, temperature, chunk=chunk)
    assert not ent.requires_grad  # a statistic
    (logp * upstream).sum().backward()
    torch.testing.assert_close(logp, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, entropy.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h.grad, gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad, gw, atol=1e-5, rtol=1e-5)

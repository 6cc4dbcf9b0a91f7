"""Every attention variant of the book gives the same output with the same weights."""

from __future__ import annotations

import pytest
import torch

from scratchlm.nn import attention as A

D_IN, D_OUT, HEADS, CTX = 12, 12, 3, 16


def test_simplified_self_attention_book_values():
    inputs = torch.tensor([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                           [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])
    out = A.simplified_self_attention(inputs)
    assert torch.allclose(out[1], torch.tensor([0.4419, 0.6515, 0.5683]), atol=1e-4)


def test_self_attention_v1_equals_v2_with_same_weights():
    torch.manual_seed(123)
    v2 = A.SelfAttentionV2(3, 2)
    v1 = A.SelfAttentionV1(3, 2)
    with torch.no_grad():
        v1.W_query.copy_(v2.W_query.weight.T)
        v1.W_key.copy_(v2.W_key.weight.T)
        v1.W_value.copy_(v2.W_value.weight.T)
    x = torch.rand(6, 3)
    assert torch.allclose(v1(x), v2(x), atol=1e-6)


def _reference(qkv_bias):
    torch.manual_seed(0)
    return A.MultiHeadAttention(D_IN, D_OUT, CTX, 0.0, HEADS, qkv_bias)


def _copy_split(mha, target):
    """Copy MultiHeadAttention's weights into a variant's layout."""
    with torch.no_grad():
        if isinstance(target, (A.MHACombinedQKV, A.CausalSelfAttention)):
            target.qkv.weight.copy_(torch.cat([mha.W_query.weight, mha.W_key.weight,
                                               mha.W_value.weight]))
            if mha.W_query.bias is not None:
                target.qkv.bias.copy_(torch.cat([mha.W_query.bias, mha.W_key.bias,
                                                 mha.W_value.bias]))
        elif isinstance(target, A.MHAEinsum):
            target.W_query.copy_(mha.W_query.weight.T)
            target.W_key.copy_(mha.W_key.weight.T)
            target.W_value.copy_(mha.W_value.weight.T)
            if mha.W_query.bias is not None:
                target.bias_q.copy_(mha.W_query.bias)
                target.bias_k.copy_(mha.W_key.bias)
                target.bias_v.copy_(mha.W_value.bias)
        target.out_proj.load_state_dict(mha.out_proj.state_dict())
    return target


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("cls", [A.MHACombinedQKV, A.MHAEinsum, A.CausalSelfAttention])
def test_multihead_variants_agree(cls, qkv_bias):
    mha = _reference(qkv_bias)
    other = _copy_split(mha, cls(D_IN, D_OUT, CTX, 0.0, HEADS, qkv_bias))
    x = torch.randn(2, 10, D_IN)
    assert torch.allclose(mha(x), other(x), atol=1e-5)


def test_wrapper_equals_split_heads():
    """Stacked CausalAttention heads == MultiHeadAttention without the output projection."""
    torch.manual_seed(1)
    head_dim = D_OUT // HEADS
    wrapper = A.MultiHeadAttentionWrapper(D_IN, head_dim, CTX, 0.0, HEADS)
    mha = A.MultiHeadAttention(D_IN, D_OUT, CTX, 0.0, HEADS)
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(mha, name).weight.copy_(
                torch.cat([getattr(h, name).weight for h in wrapper.heads]))
        mha.out_proj.weight.copy_(torch.eye(D_OUT))
        mha.out_proj.bias.zero_()
    x = torch.randn(2, 7, D_IN)
    assert wrapper(x).shape == (2, 7, D_OUT)
    assert torch.allclose(wrapper(x), mha(x), atol=1e-5)


def test_causality():
    """Changing a later token never changes an earlier output."""
    att = A.CausalSelfAttention(D_IN, D_OUT, CTX, 0.0, HEADS)
    x = torch.randn(1, 8, D_IN)
    y = x.clone()
    y[:, 5:] += 1.0
    assert torch.allclose(att(x)[:, :5], att(y)[:, :5], atol=1e-6)
    assert not torch.allclose(att(x)[:, 5:], att(y)[:, 5:])


def test_heads_must_divide():
    with pytest.raises(ValueError, match="divisible"):
        A.MultiHeadAttention(D_IN, 10, CTX, 0.0, 3)

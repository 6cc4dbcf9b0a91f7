from __future__ import annotations

import pytest
import torch

from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.nn.fuse import concat_linears, fuse_projections
from scratchlm.nn.quant import Int8Linear, quantize_int8


def _tiny_llama(**kw):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, context_length=64, n_embd=32, n_layer=2, n_head=4,
                      n_kv_head=2, intermediate_size=48, **kw)
    return Llama(cfg).eval()


@pytest.mark.parametrize("int8", [False, True])
def test_fused_projections_give_the_same_logits(int8):
    model = _tiny_llama(qkv_bias=True)
    if int8:
        quantize_int8(model)
    x = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        ref = model(x)
        fuse_projections(model)
        got = model(x)
    att, ff = model.trf_blocks[0].att, model.trf_blocks[0].ff
    assert att.qkv_proj is not None and not hasattr(att, "q_proj")
    assert ff.fc12 is not None and not hasattr(ff, "fc1")
    assert isinstance(att.qkv_proj, Int8Linear) == int8
    assert torch.allclose(got, ref, atol=1e-5)


def test_concat_refuses_mixed_layers():
    with pytest.raises(ValueError, match="bias"):
        concat_linears([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4, bias=False)])
    with pytest.raises(TypeError, match="cannot fuse"):
        concat_linears([torch.nn.Linear(4, 4), Int8Linear.from_linear(torch.nn.Linear(4, 4))])

"""gpt-oss against transformers' GptOssForCausalLM on tiny random checkpoints: logits (sinks,
sliding and full layers, biased routers, clamped experts, YaRN), MXFP4 experts dequantized as
transformers does, greedy KV-cache generation past the window, a left-padded batch, our HF
export read back, sink attention's gradients, and the published sizes."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchlm.checkpoints.files import save_safetensors  # noqa: E402
from scratchlm.checkpoints.hf import save_hf  # noqa: E402
from scratchlm.checkpoints.load import load_pretrained  # noqa: E402
from scratchlm.models.accounting import count_parameters  # noqa: E402
from scratchlm.models.convert.mxfp4 import dequantize_mxfp4  # noqa: E402
from scratchlm.models.gpt_oss import GptOss, GptOssConfig  # noqa: E402
from scratchlm.models.registry import build_model  # noqa: E402
from scratchlm.nn.attention import attention_with_sinks  # noqa: E402
from tests.models.family_checks import (assert_greedy_matches_transformers,
                                     assert_padded_batch_equals_rows)

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
        "rope_theta": 10_000.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}


def hf_config(n_layer=4, window=6, n_head=4, n_kv=2, experts=4, top_k=2, tie=False, yarn=True,
              layer_types=None):
    return transformers.GptOssConfig(
        vocab_size=300, hidden_size=64, intermediate_size=32, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=16,
        num_local_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=128,
        sliding_window=window, tie_word_embeddings=tie, layer_types=layer_types,
        rope_parameters=YARN if yarn else {"rope_type": "default", "rope_theta": 10_000.0})


def randomize(model):
    """Norms away from 1 and biases, sinks and router biases away from 0: a slip in any of
    them shows in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif "bias" in name or "sinks" in name:
                p.normal_(0.0, 0.5)
    return model


def write_hf_gpt_oss(folder, seed=0, **kw):
    torch.manual_seed(seed)
    hf = randomize(transformers.GptOssForCausalLM(hf_config(**kw)).eval())
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("kw", [
    dict(),                                   # local/global alternating, 4 experts top-2, YaRN
    dict(tie=True, experts=8, top_k=3),       # tied head, top-3 of 8
    dict(n_kv=1, yarn=False),                 # MQA, plain RoPE
    dict(n_kv=4, top_k=1, layer_types=["sliding_attention"] * 4),  # every layer local
])
def test_logits_match_transformers(tmp_path, kw):
    hf = write_hf_gpt_oss(tmp_path, **kw)
    ours = load_pretrained(str(tmp_path))
    assert isinstance(ours, GptOss)
    x = torch.randint(0, 300, (2, 50))  # longer than the window and YaRN's original context
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def _mxfp4(weights_out_in: torch.Tensor):
    """Random MXFP4 blocks and scales of a (E, out, in) tensor's shape."""
    e, rows, cols = weights_out_in.shape
    blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), dtype=torch.uint8)
    scales = torch.randint(120, 130, (e, rows, cols // 32), dtype=torch.uint8)
    return blocks, scales


def test_mxfp4_experts_load_as_transformers_dequantizes_them(tmp_path):
    """A checkpoint as openai/gpt-oss-* stores it (experts as MXFP4 blocks and scales) loads
    into the logits of transformers' model holding the weights its own dequantizer gives."""
    from safetensors.torch import load_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    hf = write_hf_gpt_oss(tmp_path / "plain", n_layer=2)
    state = load_file(tmp_path / "plain" / "model.safetensors")
    torch.manual_seed(1)
    for layer in range(2):
        pre = f"model.layers.{layer}.mlp.experts"
        for name in ("gate_up_proj", "down_proj"):
            plain = state.pop(f"{pre}.{name}")  # (E, in, out)
            blocks, scales = _mxfp4(plain.transpose(1, 2))
            state[f"{pre}.{name}_blocks"], state[f"{pre}.{name}_scales"] = blocks, scales
            want = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
            assert torch.equal(dequantize_mxfp4(blocks, scales).transpose(1, 2), want)
            getattr(hf.model.layers[layer].mlp.experts, name).data.copy_(want)
    folder = tmp_path / "mxfp4"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "plain" / "config.json").read_text())
    save_safetensors(state, folder / "model.safetensors")
    ours = load_pretrained(str(folder))
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_mxfp4_half_pair_is_named(tmp_path):
    from safetensors.torch import load_file

    write_hf_gpt_oss(tmp_path / "plain", n_layer=2)
    state = load_file(tmp_path / "plain" / "model.safetensors")
    key = "model.layers.0.mlp.experts.down_proj"
    state[key + "_blocks"] = _mxfp4(state.pop(key).transpose(1, 2))[0]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "plain" / "config.json").read_text())
    save_safetensors(state, tmp_path / "bad" / "model.safetensors")
    with pytest.raises(ValueError, match="down_proj_blocks has no .*down_proj_scales"):
        load_pretrained(str(tmp_path / "bad"))


def test_greedy_generation_past_the_window_matches_transformers(tmp_path):
    hf = write_hf_gpt_oss(tmp_path, window=5)
    assert_greedy_matches_transformers(load_pretrained(str(tmp_path)), hf)


def test_left_padded_batch_equals_single_rows(tmp_path):
    write_hf_gpt_oss(tmp_path, window=4)
    assert_padded_batch_equals_rows(load_pretrained(str(tmp_path)))


@pytest.mark.parametrize("tie", [True, False])
def test_hf_export_loads_in_transformers(tmp_path, tie):
    torch.manual_seed(0)
    cfg = GptOssConfig.from_name("gpt-oss-tiny", tie_embeddings=tie)
    model = randomize(build_model(cfg).eval())
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "GptOssForCausalLM"
    x = torch.randint(0, cfg.vocab_size, (2, 60))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4
    assert load_pretrained(str(tmp_path)).cfg == cfg  # and back


def test_sink_attention_and_its_gradients_equal_the_eager_formula():
    """softmax over [scores, sink] with the sink's column dropped, as transformers' eager
    attention computes it; gradients reach q, k, v and the sinks."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 5, 8, requires_grad=True)
    k = torch.randn(2, 2, 7, 8, requires_grad=True)
    v = torch.randn(2, 2, 7, 8, requires_grad=True)
    sinks = torch.randn(4, requires_grad=True)
    mask = torch.ones(5, 7, dtype=torch.bool).tril(2)
    got = attention_with_sinks(q, k, v, None, True, sinks)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = (q @ kk.transpose(-1, -2) / 8**0.5).masked_fill(~mask, -torch.inf)
    logits = torch.cat([scores, sinks.view(1, 4, 1, 1).expand(2, 4, 5, 1)], dim=-1)
    want = torch.softmax(logits, dim=-1)[..., :-1] @ vv
    assert (got - want).abs().max() <= 1e-6
    grads = torch.autograd.grad(got.square().sum(), (q, k, v, sinks))
    for g, w in zip(grads, torch.autograd.grad(want.square().sum(), (q, k, v, sinks))):
        assert (g - w).abs().max() <= 1e-5


@pytest.mark.parametrize("name,layers,experts,total", [
    ("gpt-oss-20b", 24, 32, 20_914_757_184),
    ("gpt-oss-120b", 36, 128, 116_829_156_672),
])
def test_published_sizes_count_as_transformers_does(name, layers, experts, total):
    with torch.device("meta"):
        ours = build_model(GptOssConfig.from_name(name))
        hf = transformers.GptOssForCausalLM(transformers.GptOssConfig(
            num_hidden_layers=layers, num_local_experts=experts))
    assert count_parameters(ours) == sum(p.numel() for p in hf.parameters()) == total

"""OLMo 3 against transformers' Olmo3ForCausalLM on tiny random checkpoints: logits with local
(sliding-window) and global layers and YaRN on the global ones, greedy KV-cache generation past
the window, a left-padded batch, our HF export read back, and the published sizes."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchlm.checkpoints.hf import save_hf  # noqa: E402
from scratchlm.checkpoints.load import load_pretrained  # noqa: E402
from scratchlm.models.accounting import count_parameters  # noqa: E402
from scratchlm.models.olmo3 import Olmo3, Olmo3Config  # noqa: E402
from scratchlm.models.registry import build_model  # noqa: E402
from scratchlm.nn.rope import inv_frequencies, yarn_attention_factor  # noqa: E402
from tests.models.family_checks import (assert_greedy_matches_transformers,
                                     assert_padded_batch_equals_rows)

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
        "attention_factor": None, "beta_fast": 32.0, "beta_slow": 1.0}


def write_hf_olmo3(folder, tie=False, n_layer=4, pattern=4, window=6, n_head=4, n_kv=2,
                   yarn=True, seed=0):
    torch.manual_seed(seed)
    types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
             for i in range(n_layer)]
    full = {"rope_type": "default", "rope_theta": 10_000.0}
    if yarn:
        full = {**{k: v for k, v in YARN.items() if v is not None}, "rope_theta": 10_000.0}
    cfg = transformers.Olmo3Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_kv, max_position_embeddings=128,
        sliding_window=window, layer_types=types, tie_word_embeddings=tie, rms_norm_eps=1e-6,
        rope_parameters={"full_attention": full,
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})
    hf = transformers.Olmo3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)  # norms away from 1: a slip in where they sit shows
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("kw", [
    dict(),                                   # 3 local (window 6) to 1 global with YaRN
    dict(tie=True, pattern=2, window=4),      # local/global alternating, tied head
    dict(n_kv=1),                             # MQA
    dict(n_kv=4, yarn=False),                 # no GQA, plain RoPE
])
def test_logits_match_transformers(tmp_path, kw):
    hf = write_hf_olmo3(tmp_path, **kw)
    ours = load_pretrained(str(tmp_path))
    assert isinstance(ours, Olmo3)
    pattern = kw.get("pattern", 4)
    assert [b.att.window for b in ours.trf_blocks] == [
        0 if (i + 1) % pattern == 0 else kw.get("window", 6) for i in range(4)]
    x = torch.randint(0, 300, (2, 50))  # longer than the window and YaRN's original context
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_yarn_matches_transformers_frequencies_and_factor():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = transformers.Olmo3Config(
        hidden_size=64, num_attention_heads=2, max_position_embeddings=4096,
        rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 8.0,
                                            "original_max_position_embeddings": 512,
                                            "rope_theta": 500_000.0},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": 500_000.0}})
    want, factor = ROPE_INIT_FUNCTIONS["yarn"](cfg, layer_type="full_attention")
    ours = {"type": "yarn", "factor": 8.0, "original_context_length": 512}
    torch.testing.assert_close(inv_frequencies(32, 500_000.0, ours), want, rtol=1e-6, atol=0)
    assert yarn_attention_factor(ours) == pytest.approx(factor)
    assert yarn_attention_factor({**ours, "attention_factor": 1.5}) == 1.5


def test_greedy_generation_past_the_window_matches_transformers(tmp_path):
    hf = write_hf_olmo3(tmp_path, window=5)
    assert_greedy_matches_transformers(load_pretrained(str(tmp_path)), hf)


def test_left_padded_batch_equals_single_rows(tmp_path):
    write_hf_olmo3(tmp_path, window=4)
    assert_padded_batch_equals_rows(load_pretrained(str(tmp_path)))


@pytest.mark.parametrize("tie", [True, False])
def test_hf_export_loads_in_transformers(tmp_path, tie):
    torch.manual_seed(0)
    cfg = Olmo3Config.from_name("olmo3-tiny", tie_embeddings=tie)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(1.0, 0.3)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "Olmo3ForCausalLM"
    x = torch.randint(0, cfg.vocab_size, (2, 60))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4
    assert load_pretrained(str(tmp_path)).cfg == cfg  # and back


@pytest.mark.parametrize("name,hf_kw", [
    ("olmo3-7b", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32)),
    ("olmo3-32b", dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                       num_attention_heads=40, num_key_value_heads=8)),
])
def test_published_sizes_count_as_transformers_does(name, hf_kw):
    with torch.device("meta"):
        ours = build_model(Olmo3Config.from_name(name))
        hf = transformers.Olmo3ForCausalLM(transformers.Olmo3Config(
            vocab_size=100278, max_position_embeddings=65536, tie_word_embeddings=False,
            **hf_kw))
    assert count_parameters(ours) == sum(p.numel() for p in hf.parameters())
    assert count_parameters(ours) > (7e9 if name == "olmo3-7b" else 32e9)

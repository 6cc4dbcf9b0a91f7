"""Gemma 3 (text) against transformers' Gemma3ForCausalLM on tiny random checkpoints: logits
with local (sliding-window) and global layers, greedy KV-cache generation past the window, and
our HF export read back."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchlm.generation.engine import Engine, SamplingParams  # noqa: E402
from scratchlm.models.accounting import memory_report  # noqa: E402
from scratchlm.models.gemma3 import Gemma3, Gemma3Config  # noqa: E402
from scratchlm.checkpoints.files import CheckpointError
from scratchlm.checkpoints.hf import save_hf
from scratchlm.checkpoints.load import load_pretrained  # noqa: E402
from scratchlm.models.registry import build_model  # noqa: E402
from tests.models.family_checks import (assert_greedy_matches_transformers,
                                     assert_padded_batch_equals_rows)


def write_hf_gemma3(folder, tie=True, n_layer=4, pattern=2, window=6, n_head=4, n_kv=2,
                    head_dim=16, scalar=24, scaling=None, seed=0):
    torch.manual_seed(seed)
    types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
             for i in range(n_layer)]
    rope = {"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
    if scaling:
        rope["full_attention"] = {"rope_type": "linear", "factor": scaling,
                                  "rope_theta": 1_000_000.0}
    cfg = transformers.Gemma3TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=head_dim,
        max_position_embeddings=128, query_pre_attn_scalar=scalar, sliding_window=window,
        layer_types=types, rope_parameters=rope, tie_word_embeddings=tie)
    hf = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)  # Gemma's norms scale by 1 + w: non-zero w shows slips
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("kw", [
    dict(),                                     # local, global, local, global; window 6
    dict(tie=False, pattern=3, window=4),       # two local to one global
    dict(n_head=4, n_kv=1, head_dim=32, scalar=32),  # MQA, head_dim * n_head != n_embd
    dict(scaling=8.0),                          # linear RoPE scaling on global layers (4B+)
])
def test_logits_match_transformers(tmp_path, kw):
    hf = write_hf_gemma3(tmp_path, **kw)
    ours = load_pretrained(str(tmp_path))
    assert isinstance(ours, Gemma3)
    windows = [b.att.window for b in ours.trf_blocks]
    assert windows == [0 if (i + 1) % kw.get("pattern", 2) == 0 else kw.get("window", 6)
                       for i in range(4)]
    x = torch.randint(0, 300, (2, 40))  # much longer than the window
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_the_window_matters():
    """A check on the check: the same weights with a window longer than the input (so local
    layers keep their RoPE base but see everything) differ once the input outgrows it."""
    torch.manual_seed(0)
    cfg = Gemma3Config.from_name("gemma3-tiny")
    local = build_model(cfg).eval()
    full = build_model(Gemma3Config.from_name("gemma3-tiny", sliding_window=1000)).eval()
    full.load_state_dict(local.state_dict())
    x = torch.randint(0, 512, (1, 30))
    with torch.no_grad():
        assert torch.allclose(local(x[:, :8]), full(x[:, :8]), atol=1e-5)  # inside the window
        assert (local(x) - full(x)).abs().max() > 1e-3


def test_greedy_generation_past_the_window_matches_transformers(tmp_path):
    hf = write_hf_gemma3(tmp_path, window=5)
    assert_greedy_matches_transformers(load_pretrained(str(tmp_path)), hf)


def test_left_padded_batch_equals_single_rows(tmp_path):
    write_hf_gemma3(tmp_path, window=4)
    assert_padded_batch_equals_rows(load_pretrained(str(tmp_path)))


@pytest.mark.parametrize("tie", [True, False])
def test_hf_export_loads_in_transformers(tmp_path, tie):
    torch.manual_seed(0)
    cfg = Gemma3Config.from_name("gemma3-tiny", tie_embeddings=tie)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0.0, 0.3)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "Gemma3ForCausalLM"
    x = torch.randint(0, cfg.vocab_size, (2, 30))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_book_parameter_counts():
    """The book's Gemma 3 270M figures (ch05/12_gemma3): 435,870,336 parameters counting the
    tied head separately, 268,098,176 unique."""
    with torch.device("meta"):
        model = build_model(Gemma3Config.from_name("gemma3-270m"))
    r = memory_report(model)
    assert (r.params_untied, r.total_params) == (435_870_336, 268_098_176)
    assert [b.att.window for b in model.trf_blocks].count(0) == 3  # layers 5, 11, 17 global


def test_bad_input_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="Gemma3Config.n_head"):
        Gemma3Config(n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="Gemma3Config.sliding_window"):
        Gemma3Config(sliding_window=-1)
    with pytest.raises(ValueError, match="sliding_window_pattern=6 needs sliding_window"):
        Gemma3Config(sliding_window=0, sliding_window_pattern=6)
    write_hf_gemma3(tmp_path)
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["final_logit_softcapping"] = 30.0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json.*final_logit_softcapping"):
        load_pretrained(str(tmp_path))
    cfg["model_type"] = "gemma3"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="multimodal"):
        load_pretrained(str(tmp_path))


def test_sliding_cache_keeps_only_the_window_and_decodes_the_same(monkeypatch):
    """Local layers keep ``window`` slots, global ones all; the tokens equal those decoded
    over a full cache (every slot kept, the window applied by the mask)."""
    from scratchlm.nn.kv_cache import KVCache, SlidingKVCache

    torch.manual_seed(0)
    model = build_model(Gemma3Config.from_name("gemma3-tiny")).eval()  # window 8, 2 local:1
    engine = Engine(model)
    cache = engine.new_cache(2, 100)
    assert isinstance(cache, SlidingKVCache)
    assert [r.shape[2] for r in cache.ring_k] == [8, 8] and cache.k.shape[0] == 1
    full = KVCache(3, 2, 2, 100, 32)
    assert cache.nbytes() == full.nbytes() * (1 + 2 * 8 / 100) / 3

    prompts = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [2, 7, 1]]
    params = SamplingParams(max_new_tokens=40)
    ring = engine.generate(prompts, params)
    monkeypatch.setattr(Engine, "new_cache", lambda self, b, n, pad=None: KVCache(
        3, b, 2, n, 32, pad=pad))
    assert engine.generate(prompts, params) == ring

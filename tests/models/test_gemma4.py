"""Gemma 4 against transformers' Gemma4ForCausalLM on tiny random checkpoints: logits over
several shapes (per-layer embeddings, KV sharing, keys as values, the mixture beside the dense
FFN, global layers of another head size, windows shorter than the input), the published
multimodal layout's text part and the published configs' way of naming the global layers'
shape, greedy generation, a left-padded batch, our HF export read back, the soft-capped head,
what is refused, and the published sizes (LoRA and PEFT: tests/finetune/test_lora_families.py;
continuous batching: tests/generation/test_slots.py)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchlm.checkpoints.files import CheckpointError  # noqa: E402
from scratchlm.checkpoints.hf import save_hf  # noqa: E402
from scratchlm.checkpoints.load import load_pretrained  # noqa: E402
from scratchlm.finetune.lora import apply_lora  # noqa: E402
from scratchlm.generation.engine import Engine  # noqa: E402
from scratchlm.models.accounting import count_parameters  # noqa: E402
from scratchlm.models.gemma4 import Gemma4, Gemma4Config  # noqa: E402
from scratchlm.models.registry import build_model, preset  # noqa: E402
from scratchlm.nn.quant import quantize_int8  # noqa: E402
from scratchlm.nn.softcap import SoftcapLinear  # noqa: E402
from tests.models.family_checks import (assert_greedy_matches_transformers,  # noqa: E402
                                        assert_padded_batch_equals_rows)


def text_config(n_layer=5, pattern=3, tie=True, **kw):
    types = ["full_attention" if (i + 1) % pattern == 0 or i == n_layer - 1
             else "sliding_attention" for i in range(n_layer)]
    return {**dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layer,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=64,
                   sliding_window=8, layer_types=types, max_position_embeddings=256,
                   tie_word_embeddings=tie, hidden_size_per_layer_input=0,
                   final_logit_softcapping=None), **kw}


EVERYTHING = dict(  # per-layer embeddings, 2 KV-shared layers (one twice as wide), keys as
    # values with one global key/value head, a mixture of 4 experts, a cap the logits reach
    hidden_size_per_layer_input=16, vocab_size_per_layer_input=300, num_kv_shared_layers=2,
    use_double_wide_mlp=True, attention_k_eq_v=True, num_global_key_value_heads=1,
    enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
    final_logit_softcapping=0.5)


def _away_from_init(model):
    """Norm scales, router scales and layer scalars away from their init of ones, so a slip in
    any of them shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "scale" in name:
                p.normal_(1.0, 0.3)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.uniform_(0.5, 1.5)


def write_hf_gemma4(folder, seed=0, **kw):
    torch.manual_seed(seed)
    hf = transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(**text_config(**kw)))
    _away_from_init(hf)
    hf.eval().save_pretrained(folder)
    return hf


@pytest.mark.parametrize("kw", [
    EVERYTHING,
    dict(tie=False, final_logit_softcapping=30.0),   # dense, untied, global heads of 64
    dict(num_key_value_heads=1, pattern=2, global_head_dim=32, n_layer=4),  # MQA, alternating
    dict(hidden_size_per_layer_input=8, vocab_size_per_layer_input=300,
         num_kv_shared_layers=3, n_layer=6),        # PLE and sharing, no mixture
    dict(attention_k_eq_v=True, num_global_key_value_heads=2, enable_moe_block=True,
         num_experts=3, top_k_experts=1, moe_intermediate_size=24),  # the 26B's kind, top-1
])
def test_logits_match_transformers(tmp_path, kw):
    hf = write_hf_gemma4(tmp_path, **kw)
    ours = load_pretrained(str(tmp_path))
    assert isinstance(ours, Gemma4)
    x = torch.randint(0, 300, (2, 40))  # five times the window
    with torch.no_grad():
        want = hf(x).logits
        assert (ours(x) - want).abs().max().item() <= 1e-4
    if kw.get("final_logit_softcapping") == 0.5:
        assert 0.45 < want.abs().max() < 0.5  # the cap is reached, so it is tested


def test_kv_shared_layers_compute_and_cache_no_keys(tmp_path):
    write_hf_gemma4(tmp_path, **EVERYTHING)
    ours = load_pretrained(str(tmp_path))
    assert ours.cfg.kv_sources == [None, None, None, 1, 2]  # local 3 reads 1, global 4 reads 2
    shared = [b.att for b in ours.trf_blocks[3:]]
    assert not any(hasattr(a, "k_proj") or hasattr(a, "v_proj") for a in shared)
    assert not hasattr(ours.trf_blocks[2].att, "v_proj")  # keys as values, global layer
    assert ours.trf_blocks[3].ff.fc1.out_features == 2 * 96  # twice as wide where shared
    cache = Engine(ours).new_cache(2, 64)
    assert cache.windows == [8, 8, 0]  # layers 0-2 only: two rings of 8, one global layer
    assert tuple(cache.k.shape) == (1, 2, 1, 64, 64)  # global: 1 key/value head of 64
    assert tuple(cache.ring_k[0].shape) == (2, 2, 8, 32)  # local: 2 heads of 32
    assert Engine(ours).new_cache(1, 5).ring_k[0].shape[2] == 5  # no longer than the cache


def test_the_published_multimodal_layout_loads_its_text_model(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Gemma4Config(
        text_config=text_config(n_layer=3, hidden_size_per_layer_input=16,
                                vocab_size_per_layer_input=300),
        vision_config=dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=16),
        audio_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          output_proj_dims=32, subsampling_conv_channels=[8, 4]))
    hf = transformers.Gemma4ForConditionalGeneration(cfg)
    _away_from_init(hf)
    hf.eval().save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))  # the vision and audio towers are left out
    x = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        assert (ours(x) - hf(input_ids=x).logits).abs().max().item() <= 1e-4


def test_the_published_configs_global_shape_keys_load(tmp_path):
    """The published config.json files name the global layers' shape ``global_head_dim`` and
    ``num_global_key_value_heads`` (transformers writes ``per_layer_config``)."""
    hf = write_hf_gemma4(tmp_path, attention_k_eq_v=True, num_global_key_value_heads=1)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    del config["per_layer_config"]
    path.write_text(json.dumps({**config, "global_head_dim": 64,
                                "num_global_key_value_heads": 1}))
    ours = load_pretrained(str(tmp_path))
    assert (ours.cfg.global_head_dim, ours.cfg.global_kv_heads) == (64, 1)
    x = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(tmp_path):
    hf = write_hf_gemma4(tmp_path, **{**EVERYTHING, "final_logit_softcapping": 30.0})
    assert_greedy_matches_transformers(load_pretrained(str(tmp_path)), hf, new=20)


def test_left_padded_batch_equals_single_rows(tmp_path):
    write_hf_gemma4(tmp_path, seed=1, **EVERYTHING)
    assert_padded_batch_equals_rows(load_pretrained(str(tmp_path)))


@pytest.mark.parametrize("kw", [
    dict(),                                                        # PLE, KV sharing, double wide
    dict(tie_embeddings=False, ple_dim=0, kv_shared_layers=0, final_logit_softcap=0.0),
    dict(k_eq_v=True, moe={"num_experts": 4, "top_k": 2, "intermediate_size": 32}),
])
def test_hf_export_loads_in_transformers(tmp_path, kw):
    torch.manual_seed(0)
    cfg = Gemma4Config.from_name("gemma4-tiny", **kw)
    model = build_model(cfg).eval()
    _away_from_init(model)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "Gemma4ForCausalLM"
    x = torch.randint(0, cfg.vocab_size, (2, 30))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4
    assert load_pretrained(str(tmp_path)).cfg == cfg  # and back


def test_the_soft_capped_head_keeps_its_cap():
    torch.manual_seed(0)
    model = build_model(Gemma4Config.from_name("gemma4-tiny", final_logit_softcap=0.25)).eval()
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        logits = model(x)
        assert logits.abs().max() < 0.25
        # the engine's last-position logits go through the head module, cap included
        engine = Engine(model)
        last = engine._last_logits(x, engine.new_cache(1, 16))
        torch.testing.assert_close(last, logits[:, -1], atol=1e-5, rtol=1e-5)
    quantize_int8(model)  # every projection int8; the capped head stays float, cap and all
    assert type(model.out_head) is SoftcapLinear
    with pytest.raises(ValueError, match="soft-capped"):
        apply_lora(build_model(Gemma4Config.from_name("gemma4-tiny")), targets=("q", "head"))


def test_what_gemma4_cannot_be_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no earlier layer of its kind"):
        Gemma4Config.from_name("gemma4-tiny", kv_shared_layers=3)  # layers 2-4: no local left
    with pytest.raises(ValueError, match="kv_shared_layers"):
        Gemma4Config.from_name("gemma4-tiny", kv_shared_layers=5)
    with pytest.raises(ValueError, match="n_global_kv_head"):
        Gemma4Config.from_name("gemma4-tiny", n_global_kv_head=3)
    with pytest.raises(ValueError, match="shared expert"):
        Gemma4Config.from_name("gemma4-tiny", moe={"num_experts": 4, "shared_expert_size": 8})
    write_hf_gemma4(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    for change, message in ((dict(use_bidirectional_attention="all"), "bidirectional"),
                            (dict(layer_types=["full_attention", "sliding_attention",
                                               "full_attention", "sliding_attention",
                                               "full_attention"]), "every-k-th"),
                            (dict(rope_parameters={"full_attention": {"rope_type": "yarn"}}),
                             "rope scaling")):
        path.write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=message):
            load_pretrained(str(tmp_path))


def _hf_shape(cfg: Gemma4Config) -> dict:
    moe = cfg.moe
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        intermediate_size=cfg.intermediate_size, global_head_dim=cfg.global_head_dim,
        num_global_key_value_heads=cfg.n_global_kv_head or None,
        attention_k_eq_v=cfg.k_eq_v, num_kv_shared_layers=cfg.kv_shared_layers,
        use_double_wide_mlp=cfg.double_wide_mlp, hidden_size_per_layer_input=cfg.ple_dim,
        sliding_window=cfg.sliding_window,
        layer_types=["sliding_attention" if w else "full_attention" for w in cfg.windows],
        enable_moe_block=bool(moe.num_experts), num_experts=moe.num_experts or None,
        top_k_experts=moe.top_k if moe.num_experts else None,
        moe_intermediate_size=moe.intermediate_size)


@pytest.mark.parametrize("name,billions", [
    # the text models' parameters (the names count the vision and audio towers too; E2B's
    # and E4B's include their per-layer embedding tables, 2.3 and 2.8 billion)
    ("gemma4-e2b", 4.63), ("gemma4-e4b", 7.46), ("gemma4-26b-a4b", 25.23), ("gemma4-31b", 30.70),
])
def test_published_sizes_count_as_transformers_does(name, billions):
    cfg = preset(name)[1]
    with torch.device("meta"):
        ours = build_model(cfg)
        hf = transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(**_hf_shape(cfg)))
    n = sum(p.numel() for p in hf.parameters())
    assert count_parameters(ours) == n
    assert abs(n / 1e9 - billions) < 0.01


def test_our_checkpoint_and_a_soft_prompt_work(tmp_path):
    from scratchlm.checkpoints.ours import save_pretrained
    from scratchlm.finetune.prompt_tuning import PromptTuned

    torch.manual_seed(0)
    model = build_model(preset("gemma4-tiny")[1]).eval()
    _away_from_init(model)
    save_pretrained(model, tmp_path / "ours")
    back = load_pretrained(str(tmp_path / "ours"))
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)  # layer scalars too
    # a soft prompt's positions have no token ids: their per-layer input is the projection
    tuned = PromptTuned(model, 4)
    loss = tuned(x).logsumexp(-1).mean()
    loss.backward()
    assert tuned.prompt.grad is not None and tuned.prompt.grad.abs().sum() > 0
    with torch.no_grad():
        h = model.embed(x[:1])
        p = tuned.prompt[None].to(h.dtype)
        mixed = model.per_layer_inputs(torch.cat([p, h], 1), x[:1])
        proj = model.ple_norm((model.ple_proj(p) * 64 ** -0.5).view(1, 4, 5, 16))
        torch.testing.assert_close(mixed[:, :4], proj)
        assert (mixed[:, 4:] - model.per_layer_inputs(h, x[:1])).abs().max() < 1e-6

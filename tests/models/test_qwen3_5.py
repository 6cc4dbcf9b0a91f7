"""Qwen3.5 against transformers' Qwen3_5ForCausalLM on tiny random checkpoints: logits of the
hybrid (Gated DeltaNet + gated attention) stack over several shapes and more than one chunk,
the published vision-language layout's text part, the chunked and recurrent forms of the delta
rule, packed documents, greedy generation, a left-padded batch, our HF export read back, and
the published sizes (LoRA and PEFT: tests/finetune/test_lora_families.py)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchlm.checkpoints.hf import save_hf  # noqa: E402
from scratchlm.checkpoints.load import load_pretrained  # noqa: E402
from scratchlm.models.accounting import count_parameters  # noqa: E402
from scratchlm.models.qwen3_5 import Qwen35, Qwen35Config  # noqa: E402
from scratchlm.models.registry import build_model, preset  # noqa: E402
from scratchlm.nn.doc_mask import DocumentMask  # noqa: E402
from scratchlm.nn.gated_deltanet import (chunked_delta_rule, recurrent_delta_rule,  # noqa: E402
                                         step_delta_rule)
from tests.models.family_checks import (assert_greedy_matches_transformers,  # noqa: E402
                                        assert_padded_batch_equals_rows)


def text_config(tie=False, n_layer=4, interval=4, n_head=4, n_kv=2, key_heads=2,
                value_heads=4, **kw):
    return dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layer,
                num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=32,
                linear_num_key_heads=key_heads, linear_num_value_heads=value_heads,
                linear_key_head_dim=16, linear_value_head_dim=16, max_position_embeddings=256,
                tie_word_embeddings=tie, rms_norm_eps=1e-6,
                layer_types=["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                             for i in range(n_layer)],
                rope_parameters={"rope_type": "default", "rope_theta": 10_000.0,
                                 "partial_rotary_factor": 0.25}, **kw)


def _away_from_init(model):
    """Norm scales away from their init, so a slip in which norm is 1 + w shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0 if "linear_attn.norm" in name else 0.0, 0.3)


def write_hf_qwen35(folder, seed=0, **kw):
    torch.manual_seed(seed)
    hf = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**text_config(**kw)))
    _away_from_init(hf)
    hf.eval().save_pretrained(folder)
    return hf


@pytest.mark.parametrize("kw", [
    dict(),                                        # 3 linear to 1 full, GQA, untied
    dict(tie=True, interval=2),                    # alternating, tied head
    dict(n_kv=1, key_heads=4, value_heads=4),      # MQA; as many value heads as key heads
    dict(n_kv=4, n_layer=8, value_heads=8),        # no GQA; 4 value heads per key head
])
def test_logits_match_transformers(tmp_path, kw):
    hf = write_hf_qwen35(tmp_path, **kw)
    ours = load_pretrained(str(tmp_path))
    assert isinstance(ours, Qwen35)
    interval = kw.get("interval", 4)
    assert [hasattr(b, "lin") for b in ours.trf_blocks] == [
        (i + 1) % interval != 0 for i in range(kw.get("n_layer", 4))]
    x = torch.randint(0, 300, (2, 150))  # three chunks of the delta rule, the last partial
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_the_published_vision_language_layout_loads_its_text_model(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Qwen3_5Config(
        text_config=text_config(),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2,
                           out_hidden_size=64, patch_size=4, temporal_patch_size=2,
                           num_position_embeddings=16))
    hf = transformers.Qwen3_5ForConditionalGeneration(cfg)
    _away_from_init(hf)
    hf.eval().save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))  # the vision tower is left out
    x = torch.randint(0, 300, (1, 40))
    with torch.no_grad():
        assert (ours(x) - hf(input_ids=x).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("t", [1, 63, 64, 130])
def test_chunked_and_recurrent_forms_are_the_same_recurrence(t):
    torch.manual_seed(t)
    q, k = torch.randn(2, t, 2, 16), torch.randn(2, t, 2, 16)
    v = torch.randn(2, t, 6, 8)  # three value heads per key head
    g, beta = -torch.rand(2, t, 6) * 2, torch.rand(2, t, 6)
    state = torch.randn(2, 6, 16, 8)
    out_c, s_c = chunked_delta_rule(q, k, v, g, beta, state)
    out_r, s_r = recurrent_delta_rule(q, k, v, g, beta, state)
    torch.testing.assert_close(out_c, out_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_c, s_r, atol=1e-5, rtol=1e-5)
    one = state.clone()  # a decode step updates the state in place
    out_1 = step_delta_rule(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1], one)
    out_r1, s_r1 = recurrent_delta_rule(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1],
                                        state)
    torch.testing.assert_close(out_1, out_r1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, s_r1, atol=1e-5, rtol=1e-5)
    # and a sequence split in two continues exactly from the first half's state
    h = t // 2
    first, mid = chunked_delta_rule(q[:, :h], k[:, :h], v[:, :h], g[:, :h], beta[:, :h], state)
    second, end = chunked_delta_rule(q[:, h:], k[:, h:], v[:, h:], g[:, h:], beta[:, h:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), out_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(end, s_c, atol=1e-5, rtol=1e-5)


def test_packed_documents_are_computed_as_if_alone():
    torch.manual_seed(0)
    model = build_model(preset("qwen3.5-tiny")[1]).eval()
    a, b = torch.randint(0, 512, (1, 9)), torch.randint(0, 512, (1, 14))
    segments = torch.tensor([[0] * 9 + [1] * 14])
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), DocumentMask(segments))
        torch.testing.assert_close(packed[:, :9], model(a), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[:, 9:], model(b), atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_transformers(tmp_path):
    hf = write_hf_qwen35(tmp_path)
    assert_greedy_matches_transformers(load_pretrained(str(tmp_path)), hf, new=20)


def test_left_padded_batch_equals_single_rows(tmp_path):
    write_hf_qwen35(tmp_path, seed=1)
    assert_padded_batch_equals_rows(load_pretrained(str(tmp_path)))


SHARED_MOE = {"num_experts": 4, "top_k": 2, "intermediate_size": 32, "shared_expert_size": 48}


@pytest.mark.parametrize("kw,architecture", [
    (dict(tie_embeddings=True), "Qwen3_5ForCausalLM"),
    (dict(tie_embeddings=False), "Qwen3_5ForCausalLM"),
    (dict(moe=SHARED_MOE), "Qwen3_5MoeForCausalLM"),
])
def test_hf_export_loads_in_transformers(tmp_path, kw, architecture):
    torch.manual_seed(0)
    cfg = Qwen35Config.from_name("qwen3.5-tiny", **kw)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0.0, 0.3)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == architecture
    x = torch.randint(0, cfg.vocab_size, (2, 80))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4
    assert load_pretrained(str(tmp_path)).cfg == cfg  # and back


def test_a_moe_layout_hf_does_not_have_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shared expert"):  # no shared expert
        save_hf(build_model(Qwen35Config.from_name("qwen3.5-tiny", moe={"num_experts": 4})),
                tmp_path)


MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
           shared_expert_intermediate_size=40)


def write_hf_qwen35_moe(folder, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.Qwen3_5MoeTextConfig(**text_config(**kw), **MOE)
    hf = transformers.Qwen3_5MoeForCausalLM(cfg)
    _away_from_init(hf)
    with torch.no_grad():  # routers and experts away from their zero / tiny init
        for name, p in hf.named_parameters():
            if "mlp" in name:
                p.normal_(0, 0.1)
    hf.eval().save_pretrained(folder)
    return hf


@pytest.mark.parametrize("kw", [dict(), dict(tie=True, interval=2)])
def test_moe_logits_match_transformers(tmp_path, kw):
    hf = write_hf_qwen35_moe(tmp_path, **kw)
    ours = load_pretrained(str(tmp_path))
    moe = ours.cfg.moe
    assert (moe.num_experts, moe.top_k, moe.intermediate_size, moe.shared_expert_size) == (
        4, 2, 48, 40)
    x = torch.randint(0, 300, (2, 70))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4
    assert_greedy_matches_transformers(ours, hf, new=8)


@pytest.mark.parametrize("name", [
    "qwen3.5-0.8b", "qwen3.5-2b", "qwen3.5-4b", "qwen3.5-9b", "qwen3.5-27b",
    # 10,000+ experts each, built on the meta device: ~12 s
    pytest.param("qwen3.5-35b-a3b", marks=pytest.mark.slow),
    pytest.param("qwen3.5-122b-a10b", marks=pytest.mark.slow)])
def test_published_sizes_count_as_transformers_does(name):
    cfg = preset(name)[1]
    moe = cfg.moe
    shape = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd,
                 num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                 num_key_value_heads=cfg.n_kv_head, linear_num_value_heads=cfg.linear_value_heads,
                 tie_word_embeddings=cfg.tie_embeddings)
    with torch.device("meta"):
        ours = build_model(cfg)
        if moe.num_experts:
            hf = transformers.Qwen3_5MoeForCausalLM(transformers.Qwen3_5MoeTextConfig(
                **shape, num_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
                moe_intermediate_size=moe.intermediate_size,
                shared_expert_intermediate_size=moe.shared_expert_size))
        else:
            hf = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(
                **shape, intermediate_size=cfg.intermediate_size))
    n = sum(p.numel() for p in hf.parameters())
    assert count_parameters(ours) == n
    total = float(name.split("-")[1].removesuffix("b"))
    assert 0.7 < n / (total * 1e9) < 1.1  # near the name (which counts the vision tower)

"""Qwen3 (dense and MoE) against transformers' Qwen3ForCausalLM / Qwen3MoeForCausalLM on tiny
random checkpoints: logits, greedy KV-cache generation, and our HF export read back."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchlm.generation.engine import Engine, SamplingParams  # noqa: E402
from scratchlm.models.accounting import memory_report  # noqa: E402
from scratchlm.checkpoints.hf import save_hf
from scratchlm.checkpoints.load import load_pretrained
from scratchlm.checkpoints.ours import save_pretrained  # noqa: E402
from scratchlm.models.qwen3 import Qwen3, Qwen3Config  # noqa: E402
from scratchlm.models.registry import build_model, family_of  # noqa: E402


def randomize_norms(hf):
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)  # non-trivial norm weights, so a mapping slip shows


def write_hf_qwen3(folder, tie=True, n_head=4, n_kv=2, head_dim=24, moe=None, seed=0):
    torch.manual_seed(seed)
    kw = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=head_dim,
              max_position_embeddings=128, rope_theta=1_000_000.0, tie_word_embeddings=tie,
              rms_norm_eps=1e-6)
    if moe:
        cfg = transformers.Qwen3MoeConfig(**kw, num_experts=moe[0], num_experts_per_tok=moe[1],
                                          moe_intermediate_size=40, norm_topk_prob=moe[2])
        hf = transformers.Qwen3MoeForCausalLM(cfg).eval()
    else:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw)).eval()
    randomize_norms(hf)
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("tie,n_head,n_kv,head_dim", [
    (True, 4, 2, 24),   # head_dim * n_head (96) != n_embd (64)
    (False, 4, 2, 16),  # head_dim * n_head == n_embd, untied head
    (True, 4, 4, 32),   # no GQA
    (False, 8, 1, 8),   # one KV head
])
def test_logits_match_transformers(tmp_path, tie, n_head, n_kv, head_dim):
    hf = write_hf_qwen3(tmp_path, tie, n_head, n_kv, head_dim)
    ours = load_pretrained(str(tmp_path))
    assert isinstance(ours, Qwen3) and family_of(ours).name == "qwen3"
    assert ours.cfg.qk_norm and ours.cfg.head_dim == head_dim and ours.cfg.tie_embeddings == tie
    x = torch.randint(0, 300, (2, 37))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("num_experts,top_k,norm", [(8, 2, True), (4, 1, False), (6, 3, True)])
def test_moe_logits_match_transformers(tmp_path, num_experts, top_k, norm):
    hf = write_hf_qwen3(tmp_path, tie=False, moe=(num_experts, top_k, norm))
    ours = load_pretrained(str(tmp_path))
    moe = ours.cfg.moe
    assert (moe.num_experts, moe.top_k, moe.intermediate_size, moe.norm_topk_prob) == (
        num_experts, top_k, 40, norm)
    x = torch.randint(0, 300, (2, 29))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_a_wrong_mapping_is_caught(tmp_path):
    """A check on the check: swapping the q/k norms changes the logits beyond the tolerance."""
    hf = write_hf_qwen3(tmp_path)
    ours = load_pretrained(str(tmp_path))
    att = ours.trf_blocks[0].att
    with torch.no_grad():
        q = att.q_norm.weight.clone()
        att.q_norm.weight.copy_(att.k_norm.weight)
        att.k_norm.weight.copy_(q)
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() > 1e-3


@pytest.mark.parametrize("moe", [None, (4, 2, True)])
def test_greedy_generation_matches_transformers(tmp_path, moe):
    hf = write_hf_qwen3(tmp_path, tie=moe is None, moe=moe)
    ours = load_pretrained(str(tmp_path))
    prompts = [[5, 17, 42, 99, 3], [7, 8]]
    got = Engine(ours).generate(prompts, SamplingParams(max_new_tokens=12))
    for p, g in zip(prompts, got):
        want = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                           attention_mask=torch.ones(1, len(p), dtype=torch.long))
        assert g == want[0, len(p):].tolist()


@pytest.mark.parametrize("moe", [None, {"num_experts": 4, "top_k": 2, "intermediate_size": 24}])
def test_hf_export_loads_in_transformers(tmp_path, moe):
    torch.manual_seed(0)
    cfg = Qwen3Config.from_name("qwen3-tiny", tie_embeddings=moe is None, moe=moe or {})
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(1.0, 0.2)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if moe is None else "Qwen3MoeForCausalLM")
    x = torch.randint(0, cfg.vocab_size, (2, 19))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-4
    again = load_pretrained(str(tmp_path))  # and back through our HF loader
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)


def test_our_layout_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(Qwen3Config.from_name("qwen3-tiny",
                                              moe={"num_experts": 2, "top_k": 1})).eval()
    save_pretrained(model, tmp_path)
    again = load_pretrained(str(tmp_path))
    assert type(again.cfg) is Qwen3Config and again.cfg.moe.num_experts == 2
    x = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_book_parameter_counts():
    """The book's Qwen3 0.6B figures (ch05/11_qwen3): 751,632,384 parameters counting the tied
    head separately, 596,049,920 unique."""
    with torch.device("meta"):
        model = build_model(Qwen3Config.from_name("qwen3-0.6b"))
    r = memory_report(model)
    assert (r.params_untied, r.total_params) == (751_632_384, 596_049_920)


@pytest.mark.parametrize("name,params", [("qwen3-1.7b", 1_720_574_976),
                                         ("qwen3-8b", 8_190_735_360),
                                         ("qwen3-30b-a3b", 30_532_122_624)])
def test_published_sizes(name, params):
    """Unique parameter counts of the published checkpoints (their safetensors index totals)."""
    from scratchlm.models.registry import preset

    with torch.device("meta"):
        model = build_model(preset(name)[1])
    assert sum(p.numel() for p in model.parameters()) == params


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="Qwen3Config.n_head"):
        Qwen3Config(n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="Qwen3Config.head_dim"):
        Qwen3Config(head_dim=33)
    with pytest.raises(ValueError, match="moe.top_k"):
        Qwen3Config(moe={"num_experts": 4, "top_k": 5})
    with pytest.raises(ValueError, match="unknown Qwen3 preset"):
        Qwen3Config.from_name("qwen3-99b")

"""GPT-2 checkpoints in the Hugging Face layout: parity with transformers, export, errors,
and the real download path against a server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import static_server  # noqa: E402
from scratchlm.checkpoints.files import CheckpointError
from scratchlm.checkpoints.hf import load_hf_gpt2, save_hf_gpt2
from scratchlm.checkpoints.load import load_pretrained
from scratchlm.checkpoints.ours import save_pretrained


def write_hf_gpt2(folder, n_layer=2, n_embd=64, n_head=4, vocab=1000, ctx=64, tie=True, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
                                  n_positions=ctx, tie_word_embeddings=tie)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # random biases and norms, so a mapping slip shows
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(0, 0.1)
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("shape", [
    dict(n_layer=2, n_embd=64, n_head=4),
    dict(n_layer=3, n_embd=48, n_head=3, vocab=777),
    dict(n_layer=1, n_embd=32, n_head=1, tie=False),
])
def test_logits_match_transformers(tmp_path, shape):
    hf = write_hf_gpt2(tmp_path, **shape)
    ours = load_hf_gpt2(tmp_path).eval()
    x = torch.randint(0, hf.config.vocab_size, (2, 20))
    with torch.no_grad():
        want = hf(x).logits
        got = ours(x)
    assert (got - want).abs().max().item() <= 1e-4
    assert ours.cfg.tie_embeddings == shape.get("tie", True)


def test_padded_vocab_loads_and_matches(tmp_path):
    hf = write_hf_gpt2(tmp_path, vocab=1000)
    ours = load_hf_gpt2(tmp_path, vocab_pad_multiple=64).eval()
    assert ours.tok_emb.weight.shape[0] == 1024
    x = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_export_round_trip_through_transformers(tmp_path, qkv_bias):
    from scratchlm.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=500, context_length=32, n_embd=32, n_layer=2, n_head=4,
                          qkv_bias=qkv_bias)).eval()
    save_hf_gpt2(model, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 500, (2, 16))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    # and our own layout round-trips exactly
    save_pretrained(model, tmp_path / "ours")
    again = load_pretrained(str(tmp_path / "ours"))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again.out_head.weight is again.tok_emb.weight


def test_mismatched_checkpoint_names_key_and_shapes(tmp_path):
    write_hf_gpt2(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    key = next(k for k in state if k.endswith("h.1.mlp.c_fc.weight"))
    state[key] = torch.zeros(64, 100)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"trf_blocks.1.ff.layers.0.weight.*\(100, 64\).*\(256, 64\)"):
        load_hf_gpt2(tmp_path)
    del state[key]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys.*trf_blocks.1.ff.layers.0.weight"):
        load_hf_gpt2(tmp_path)


def test_sharded_checkpoint(tmp_path):
    hf = write_hf_gpt2(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a, b = load_hf_gpt2(tmp_path / "single"), load_hf_gpt2(tmp_path / "sharded")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_load_pretrained_downloads_from_the_hub_layout(tmp_path, monkeypatch):
    """`load_pretrained("gpt2-124m")` fetches config.json + model.safetensors over HTTP."""
    repo = tmp_path / "hub" / "openai-community" / "gpt2" / "resolve" / "main"
    hf = write_hf_gpt2(repo)
    with static_server(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub)
        monkeypatch.setenv("SCRATCHLM_MIRROR", "")
        monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
        model = load_pretrained("gpt2-124m", progress=False)
    assert (tmp_path / "cache" / "hf" / "openai-community" / "gpt2" / "model.safetensors").is_file()
    x = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    assert json.loads((repo / "config.json").read_text())["model_type"] == "gpt2"

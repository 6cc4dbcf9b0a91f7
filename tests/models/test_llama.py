"""Our Llama against transformers' LlamaForCausalLM on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from scratchlm.models.llama import Llama, LlamaConfig  # noqa: E402
from scratchlm.checkpoints.hf import load_hf_llama
from scratchlm.checkpoints.load import load_pretrained
from scratchlm.checkpoints.ours import save_pretrained  # noqa: E402
from scratchlm.nn.rope import inv_frequencies  # noqa: E402


def write_hf_llama(folder, tie=True, n_kv=2, scaling=None, seed=0):
    torch.manual_seed(seed)
    kw = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=n_kv, max_position_embeddings=128,
              rope_theta=50000.0, tie_word_embeddings=tie, rms_norm_eps=1e-5)
    if scaling:
        kw["rope_scaling"] = scaling
    cfg = transformers.LlamaConfig(**kw)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)  # non-trivial norm weights, so a mapping slip shows
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("tie,n_kv", [(True, 2), (False, 2), (True, 4), (False, 1)])
def test_logits_match_transformers(tmp_path, tie, n_kv):
    hf = write_hf_llama(tmp_path, tie=tie, n_kv=n_kv)
    ours = load_hf_llama(tmp_path).eval()
    assert ours.cfg.tie_embeddings == tie and ours.cfg.n_kv_head == n_kv
    x = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_llama3_rope_scaling_matches(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    hf = write_hf_llama(tmp_path, scaling=scaling)
    ours = load_hf_llama(tmp_path).eval()
    assert ours.cfg.rope_scaling["factor"] == 8.0
    x = torch.randint(0, 300, (1, 100))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-4
    plain = inv_frequencies(16, 50000.0)
    scaled = inv_frequencies(16, 50000.0, ours.cfg.rope_scaling)
    assert torch.allclose(scaled[0], plain[0]) and torch.allclose(scaled[-1], plain[-1] / 8)


def test_save_and_load_our_layout(tmp_path):
    torch.manual_seed(0)
    model = Llama(LlamaConfig.from_name("llama-tiny")).eval()
    save_pretrained(model, tmp_path)
    again = load_pretrained(str(tmp_path))
    x = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_config_validation():
    with pytest.raises(ValueError, match="n_kv_head"):
        LlamaConfig(n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="unknown Llama preset"):
        LlamaConfig.from_name("llama-9")


def test_sharded_hub_download_with_tokenizer_and_token(tmp_path, monkeypatch):
    """`load_model_and_tokenizer("smollm2-135m")` fetches config, shards and tokenizer files
    from a hub on 127.0.0.1, sending HF_TOKEN."""
    import functools
    import http.server
    import json
    import threading

    from scratchlm.checkpoints.load import load_model_and_tokenizer
    from scratchlm.tokenizers import HFTokenizer

    repo = tmp_path / "hub" / "HuggingFaceTB" / "SmolLM2-135M" / "resolve" / "main"
    hf = write_hf_llama(tmp_path / "single")
    hf.save_pretrained(repo, max_shard_size="50KB")
    assert (repo / "model.safetensors.index.json").is_file()
    tokens = [chr(c) for c in range(33, 127)] + ["ab", "<|im_end|>"]
    tokens += [f"t{i}" for i in range(300 - len(tokens))]
    tok = HFTokenizer.from_vocab_merges(tokens, ["a b"], special_tokens=["<|im_end|>"])
    tok.tokenizer.save(str(repo / "tokenizer.json"))
    (repo / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "chat_template": "{{ messages[0]['content'] }}"}))
    seen = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path / "hub")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
        monkeypatch.setenv("HF_TOKEN", "secret")
        monkeypatch.setenv("SCRATCHLM_MIRROR", "")
        monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
        model, tokenizer = load_model_and_tokenizer("smollm2-135m", progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen and all(h == "Bearer secret" for h in seen)
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    assert tokenizer.eos_id == tokens.index("<|im_end|>")
    assert tokenizer.encode("ab") == [tokens.index("ab")]
    assert tokenizer.chat_template.startswith("{{")

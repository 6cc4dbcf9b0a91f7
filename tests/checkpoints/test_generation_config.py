"""Sampling defaults come from the model (generation_config.json, GGUF sampling fields, a
delta final's base), else greedy; the server, chat, generate and the API share them, and a
request's own settings win."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import serve_subprocess
from scratchlm.checkpoints.generation_config import GREEDY, from_gguf, from_hf, sampling_defaults


def _write(folder, cfg):
    (folder / "generation_config.json").write_text(json.dumps(cfg))
    return folder / "generation_config.json"


def test_hf_generation_config(tmp_path):
    assert from_hf(_write(tmp_path, {"bos_token_id": 1})).temperature == 0.0  # no do_sample
    d = from_hf(_write(tmp_path, {"do_sample": True}))  # Hugging Face's own defaults
    assert (d.temperature, d.top_k, d.top_p) == (1.0, 50, None)
    d = from_hf(_write(tmp_path, {"do_sample": True, "temperature": 0.6, "top_p": 0.95,
                                  "top_k": 20}))
    assert (d.temperature, d.top_k, d.top_p) == (0.6, 20, 0.95)
    d = from_hf(_write(tmp_path, {"do_sample": True, "temperature": None, "top_k": 20.0}))
    assert (d.temperature, d.top_k, d.top_p) == (1.0, 20, None)  # null: not set


@pytest.mark.parametrize("field,value", [
    ("do_sample", "no"), ("do_sample", 1), ("temperature", "hot"), ("temperature", float("nan")),
    ("temperature", -1), ("top_k", -3), ("top_k", 2.5), ("top_k", float("inf")), ("top_k", True),
    ("top_p", 7), ("top_p", "0.9")])
def test_a_generation_config_field_of_the_wrong_type_names_the_file_and_field(tmp_path, field,
                                                                              value):
    # "do_sample": "no" is a non-empty string, so it used to sample; odd numbers fell back silently
    path = _write(tmp_path, {"do_sample": True, field: value})
    with pytest.raises(ValueError, match=rf"generation_config.json: '{field}' must be"):
        from_hf(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json: not a generation config"):
        from_hf(path)


def test_gguf_sampling_fields_and_resolve():
    assert from_gguf({"general.name": "x"}, "f.gguf") is None
    d = from_gguf({"general.sampling.temp": 0.8, "general.sampling.top_p": 0.9}, "f.gguf")
    assert (d.temperature, d.top_k, d.top_p) == pytest.approx((0.8, None, 0.9))
    assert d.resolve() == pytest.approx((0.8, None, 0.9))
    assert d.resolve(temperature=0.0, top_k=5) == pytest.approx((0.0, 5, 0.9))
    assert d.resolve(top_p=1.0) == pytest.approx((0.8, None, None))  # 1.0 switches it off
    assert GREEDY.resolve() == (0.0, None, None)
    assert sampling_defaults("smollm2-135m-instruct") == GREEDY  # its GGUF names none


def test_a_delta_final_samples_as_its_base_and_the_api_uses_it(tmp_path, tiny_chat_model):
    from scratchlm import LLM
    from scratchlm.finetune.config import LoraConfig
    from scratchlm.finetune.lora import apply_lora
    from scratchlm.finetune.setup import save_final
    from scratchlm.checkpoints.load import load_model_and_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_chat_model(), base)
    assert LLM.load(str(base)).sampling().temperature == 0.0  # nothing said: greedy
    _write(base, {"do_sample": True, "temperature": 0.7, "top_k": 40})
    model, tok = load_model_and_tokenizer(str(base))
    apply_lora(model, 2, 4.0, ("q",))
    save_final(model, tok, tmp_path / "final", LoraConfig(rank=2, alpha=4, targets=["q"]),
               str(base))
    assert sampling_defaults(str(tmp_path / "final")).temperature == 0.7
    llm = LLM.load(str(tmp_path / "final"))
    s = llm.sampling()
    assert (s.temperature, s.top_k) == (0.7, 40)
    assert llm.sampling(temperature=0).temperature == 0  # the caller's setting wins


def test_the_server_samples_as_the_model_asks(tmp_path, tiny_chat_model):
    import urllib.request

    model = tmp_path / "hot"
    shutil.copytree(tiny_chat_model(tie_embeddings=False), model)
    _write(model, {"do_sample": True, "temperature": 2.0})

    def ask(base, **extra):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, **extra}
        req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=60).read())[
            "choices"][0]["message"]["content"]

    with serve_subprocess("--model", str(model)) as base:
        sampled = {ask(base, seed=s) for s in range(4)}
        greedy = {ask(base, seed=s, temperature=0) for s in range(2)}
    assert len(sampled) > 1  # temperature 2.0 from generation_config.json, not greedy
    assert len(greedy) == 1  # a request's temperature wins

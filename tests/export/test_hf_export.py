"""ours -> HF folder -> transformers: logits within 1e-4 (fp32) and the same greedy tokens for
every family; AutoTokenizer encodes as ours and keeps the chat template; large models shard."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_models import tiny
from scratchlm.export.hf import write_hf

TEXT = "Hello, world! 12345 naïve café, 日本語, русский 🎉"
HF_FAMILIES = {
    "gpt": ("gpt-tiny", {"vocab_size": 512}),
    "llama": ("llama-tiny", {}),
    "qwen3": ("qwen3-tiny", {}),
    "qwen3moe": ("qwen3-tiny", {"moe": {"num_experts": 4, "top_k": 2, "intermediate_size": 32}}),
    "gemma3": ("gemma3-tiny", {}),
    "gemma4": ("gemma4-tiny", {}),
}


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_transformers_loads_the_export_with_equal_logits(family, small_bpe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, changes = HF_FAMILIES[family]
    model = tiny(name, **changes)
    write_hf(model, small_bpe, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    x = torch.randint(0, model.cfg.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
        ours = x[:1]
        for _ in range(8):  # greedy, both sides
            ours = torch.cat([ours, model(ours)[:, -1:].argmax(-1)], 1)
        theirs = hf.generate(x[:1], max_new_tokens=8, do_sample=False,
                             pad_token_id=small_bpe.eos_id)
    assert theirs.tolist() == ours.tolist()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok(TEXT)["input_ids"] == small_bpe.encode(TEXT)


def test_the_chat_template_and_special_tokens_travel(tmp_path):
    from transformers import AutoTokenizer

    from scratchlm.models.convert.gguf import read_gguf
    from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer
    from scratchlm.checkpoints.names import smollm2_gguf
    from scratchlm.tokenizers.chat import encode_chat

    ours = gguf_tokenizer(read_gguf(smollm2_gguf())[0])
    model = tiny("llama-tiny", vocab_size=49152)
    write_hf(model, ours, tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=False) == encode_chat(
        ours, chat, add_generation_prompt=True)
    assert tok.eos_token == ours.eos_token and tok(TEXT)["input_ids"] == ours.encode(TEXT)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] == ours.eos_id
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == \
        ours.eos_id


def test_a_large_state_dict_is_sharded_with_an_index(small_bpe, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny("llama-tiny")
    write_hf(model, small_bpe, tmp_path, max_shard_bytes=64 * 1024)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 512, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def test_a_classifier_head_is_refused(small_bpe, tmp_path):
    from scratchlm.finetune.classification import add_classifier_head

    model = tiny("llama-tiny")
    add_classifier_head(model, 2)
    with pytest.raises(ValueError, match="classifier or reward model"):
        write_hf(model, small_bpe, tmp_path / "c")
    assert not (tmp_path / "c").exists()

"""A finetuned final/ stored as what was trained over its base (checkpoints/delta.py): it loads
into the same model the merged save gives, for a fused-qkv GPT and a tied Llama with an
adapted head, a classifier head, and a delta over another delta; a missing base is named."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.finetune.classification import prepare_head_finetuning
from scratchlm.finetune.config import LoraConfig
from scratchlm.finetune.lora import apply_lora, lora_modules
from scratchlm.finetune.setup import save_final
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.models.llama import Llama, LlamaConfig
from scratchlm.checkpoints.files import CheckpointError
from scratchlm.checkpoints.load import load_pretrained
from scratchlm.checkpoints.ours import save_pretrained
from scratchlm.training.checkpoint import load_checkpoint, save_checkpoint


def _trained(model, lora: LoraConfig):
    """LoRA on, with B away from zero, as after training."""
    apply_lora(model, lora.rank, lora.alpha, tuple(lora.targets), scaling=lora.scaling)
    for m in lora_modules(model).values():
        for b in m.lora_B.values():
            torch.nn.init.normal_(b.weight, std=0.05)
    return model


def _base(tmp_path, model):
    folder = tmp_path / "base"
    save_pretrained(model, folder)
    return folder


@pytest.mark.parametrize("kind", ["gpt", "llama-tied"])
def test_a_delta_final_loads_as_the_merged_model(tmp_path, gpt2_tok, kind):
    torch.manual_seed(0)
    if kind == "gpt":
        model = GPT(GPTConfig(vocab_size=64, context_length=16, n_embd=32, n_layer=2, n_head=4))
    else:
        model = Llama(LlamaConfig(vocab_size=64, context_length=16, n_embd=32, n_layer=2,
                                  n_head=4, n_kv_head=2, intermediate_size=64,
                                  tie_embeddings=True))
    base = _base(tmp_path, model)
    lora = LoraConfig(rank=4, alpha=8, targets=["all"], scaling="peft")
    tuned = _trained(load_pretrained(str(base)), lora)
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        want = tuned(x)
    save_final(tuned, gpt2_tok, tmp_path / "final", lora, str(base))
    final = tmp_path / "final"
    assert not (final / "model.safetensors").exists()  # only what was trained
    assert json.loads((final / "config.json").read_text())["scratchlm"]["base"]["model"] == \
        str(base.resolve())
    loaded = load_pretrained(str(final))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(load_pretrained(str(base))(x), want, atol=1e-3)
    if kind == "llama-tied":  # the adapted head was untied from the embedding by merging
        assert loaded.cfg.tie_embeddings is False
        assert not torch.equal(loaded.out_head.weight, loaded.tok_emb.weight)

    merged = tmp_path / "merged"
    save_final(_trained(load_pretrained(str(base)), lora), gpt2_tok, merged,
               LoraConfig(rank=4, alpha=8, scaling="peft", save_merged=True), str(base))
    assert (merged / "model.safetensors").is_file() and (merged / "adapter" / "lora.json").is_file()
    assert "base" not in json.loads((merged / "config.json").read_text())["scratchlm"]


def test_a_classifier_delta_and_a_delta_over_a_delta(tmp_path, gpt2_tok):
    torch.manual_seed(1)
    base = _base(tmp_path, GPT(GPTConfig(vocab_size=64, context_length=16, n_embd=32,
                                         n_layer=2, n_head=4)))
    # an SFT-like delta first, then a classifier trained over it (head + LoRA)
    lora = LoraConfig(rank=2, alpha=4, targets=["q", "v"])
    save_final(_trained(load_pretrained(str(base)), lora), gpt2_tok, tmp_path / "sft", lora,
               str(base))
    clf = load_pretrained(str(tmp_path / "sft"))
    prepare_head_finetuning(clf, 2, lora=LoraConfig(rank=2, alpha=4, targets=["ff"]))
    for m in lora_modules(clf).values():
        torch.nn.init.normal_(m.lora_B["all"].weight, std=0.05)
    x = torch.randint(0, 64, (3, 8))
    with torch.no_grad():
        want = clf(x)
    save_final(clf, gpt2_tok, tmp_path / "clf", LoraConfig(rank=2, alpha=4, targets=["ff"]),
               str(tmp_path / "sft"))
    assert (tmp_path / "clf" / "trained.safetensors").is_file()  # the new head
    loaded = load_pretrained(str(tmp_path / "clf"))
    assert loaded.out_head.out_features == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=1e-5)

    import shutil

    shutil.rmtree(tmp_path / "sft")
    with pytest.raises(CheckpointError, match=r"clf/config.json: its base model .*sft is missing"):
        load_pretrained(str(tmp_path / "clf"))


def test_a_frozen_base_checkpoint_holds_only_what_trains(tmp_path):
    torch.manual_seed(2)
    cfg = GPTConfig(vocab_size=64, context_length=16, n_embd=32, n_layer=2, n_head=4)
    model = _trained(GPT(cfg), LoraConfig(rank=2, alpha=4))
    ckpt = save_checkpoint(tmp_path, 1, model, None, {}, {"train": {"max_steps": 1}})
    from safetensors.torch import load_file

    saved = load_file(ckpt / "model.safetensors")
    assert saved and all(".lora_" in k for k in saved)
    fresh = GPT(cfg)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora_" not in k},
                          strict=False)
    fresh = _trained(fresh, LoraConfig(rank=2, alpha=4))
    load_checkpoint(ckpt, fresh, restore_rng=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    # a model that trains what the checkpoint calls frozen is refused, not half-loaded
    for p in fresh.parameters():
        p.requires_grad_(True)
    with pytest.raises(Exception, match="missing"):
        load_checkpoint(ckpt, fresh, restore_rng=False)

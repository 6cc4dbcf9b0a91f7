"""LoRA and QLoRA on the Qwen3, Gemma 3, OLMo 3, gpt-oss, Qwen3.5 and Gemma 4 families: every
projection (every expert's, in a mixture of experts) is a target, training
moves the loss, and the PEFT adapter folder loads onto the transformers model of the same
weights with equal logits."""

from __future__ import annotations

import pytest
import torch

from scratchlm.finetune.lora import LoRALinear, apply_lora, lora_modules
from scratchlm.models.registry import build_model, preset
from scratchlm.nn.loss import cross_entropy

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.mark.parametrize("name", ["qwen3-tiny", "gemma3-tiny", "olmo3-tiny", "gpt-oss-tiny",
                                  "qwen3.5-tiny", "gemma4-tiny"])
@pytest.mark.parametrize("quantize_base", [None, "nf4"])
def test_lora_and_qlora_train(name, quantize_base):
    torch.manual_seed(0)
    model = build_model(preset(name)[1])
    apply_lora(model, rank=4, alpha=8, targets="all", quantize_base=quantize_base)
    wrapped = lora_modules(model)
    for i, block in enumerate(model.trf_blocks):
        per_block = {n.split(".", 2)[2] for n in wrapped if n.startswith(f"trf_blocks.{i}.")}
        moe = model.cfg.moe.num_experts
        ffns = [f"ff.experts.{e}" for e in range(moe)] if moe else ["ff"]
        # Qwen3.5's linear-attention layers: output and input projections ("out", "lin");
        # Gemma 4's KV-shared layers have no k/v projections
        mixer = (["lin.out_proj", "lin.qkv_proj", "lin.z_proj", "lin.a_proj", "lin.b_proj"]
                 if hasattr(block, "lin") else
                 [f"att.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")
                  if hasattr(block.att, p)])
        assert per_block == {*mixer, *(["ff.router"] if moe else []),
                             *(f"{ff}.{fc}" for ff in ffns for fc in ("fc1", "fc2", "fc3"))}
    x = torch.randint(0, model.cfg.vocab_size, (4, 24))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = cross_entropy(model(x), x.roll(-1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    # Gemma 4's soft-capped head is no LoRA target, and the head moves the loss most
    assert losses[-1] < losses[0] - (0.1 if name == "gemma4-tiny" else 0.3)


def _randomize_adapters(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                for p in m.parameters():
                    if p.requires_grad:
                        p.normal_(0, 0.05)


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "olmo3", "gpt-oss", "qwen3.5", "gemma4"])
def test_peft_loads_our_adapter(tmp_path, family):
    from scratchlm.finetune.peft_format import load_peft_adapter, save_peft_adapter
    from scratchlm.checkpoints.hf import save_hf
    from scratchlm.checkpoints.load import load_pretrained

    torch.manual_seed(0)
    base = build_model(preset(f"{family}-tiny")[1]).eval()
    save_hf(base, tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    ours = load_pretrained(str(tmp_path / "base"))
    # gpt-oss's experts are stacked parameters in transformers: no module for PEFT to adapt
    ff = ("ff",) if family != "gpt-oss" else ()
    lin = ("lin",) if family == "qwen3.5" else ()  # the linear-attention layers' inputs
    apply_lora(ours, rank=4, alpha=8, targets=("q", "k", "v", "out", *ff, *lin))
    _randomize_adapters(ours)
    save_peft_adapter(ours, tmp_path / "adapter", str(tmp_path / "base"))
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        assert (ours(x) - peft_model(x).logits).abs().max() <= 1e-4
        assert (ours(x) - base(x)).abs().max() > 1e-3  # the adapter does something
    again = load_peft_adapter(load_pretrained(str(tmp_path / "base")), tmp_path / "adapter")
    with torch.no_grad():
        assert (again(x) - ours(x)).abs().max() <= 1e-5


def test_peft_export_of_adapted_experts_is_refused_by_name(tmp_path):
    from scratchlm.finetune.peft_format import save_peft_adapter

    model = build_model(preset("gpt-oss-tiny")[1])
    apply_lora(model, rank=4, alpha=8, targets=("q", "ff"))
    with pytest.raises(ValueError, match="ff.experts.0.fc1 has no module of its own"):
        save_peft_adapter(model, tmp_path / "adapter")

"""The family registry: every preset builds, every family is found by its config, HF
model_type and GGUF architecture, and the native decoder's choice per family is explicit."""

from __future__ import annotations

import pytest
import torch

from scratchlm.generation.engine import Engine
from scratchlm.generation.native_decode import NativeDecoder, kernel_for
from scratchlm.models.registry import (FAMILIES, build_model, family_for_gguf, family_for_hf,
                                       family_named, family_of, model_features, preset,
                                       preset_names)


def _experts(name: str) -> int:
    cfg = preset(name)[1]
    return cfg.moe.num_experts * cfg.n_layer


# thousands of expert modules take seconds each to build, even on the meta device
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if _experts(n) > 2000
                                  else n for n in preset_names()])
def test_every_preset_builds_on_meta_and_knows_its_family(name):
    fam, cfg = preset(name)
    with torch.device("meta"):
        model = build_model(cfg)
    assert family_of(model) is fam and isinstance(model, fam.model_cls)
    assert family_named(fam.name) is fam


def test_lookups_by_outside_names():
    assert family_for_hf("qwen3_moe").name == "qwen3"
    assert family_for_hf("gemma3_text").name == "gemma3"
    assert family_for_gguf("qwen3moe").name == "qwen3"
    with pytest.raises(ValueError, match="unsupported model_type 'mamba'"):
        family_for_hf("mamba")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt5")
    with pytest.raises(ValueError, match="not a model or config of a known family"):
        family_of(torch.nn.Linear(2, 2))


def test_families_do_not_share_presets():
    names = preset_names()
    assert len(names) == len(set(names))
    assert {f.name for f in FAMILIES.values()} == {"gpt", "llama", "qwen3", "gemma3", "olmo3",
                                                 "gpt_oss", "qwen3_5", "gemma4"}


# Which path each family's one-token steps take on a CPU (float32): the C layers compute
# RMSNorm/SwiGLU/RoPE with optional q/k norms (Llama, Qwen3) and LayerNorm/GELU (GPT) only;
# anything else stays in PyTorch, and kernel_for says why.
PATHS = {
    "gpt-tiny": "gpt_layer",
    "llama-tiny": "llama_layer",
    "qwen3-tiny": "llama_layer",
    "gemma3-tiny": None,  # Gemma norms, post-norms, GeGLU, sliding window, ...
    "olmo3-tiny": None,  # norms after attention and feed-forward only, q/k norms over all heads
    "gpt-oss-tiny": None,  # attention sinks, output bias, clamped SwiGLU experts
    "qwen3.5-tiny": None,  # Gated DeltaNet layers, gated attention, partial RoPE
    "gemma4-tiny": None,  # per-layer embeddings, KV sharing, value norms, soft-capped logits
}


@pytest.mark.parametrize("name", list(PATHS))
def test_native_decode_path_per_family(name):
    torch.manual_seed(0)
    model = build_model(preset(name)[1]).eval()
    kernel, why = kernel_for(model)
    assert kernel == PATHS[name]
    if kernel is None:
        assert why.startswith("no native layer for:") and NativeDecoder.create(model) is None
        assert Engine(model).native is None
    else:
        assert why == ""


def test_switches_any_family_turns_on_leave_the_native_path():
    llama_window = build_model(preset("llama-tiny", sliding_window=8)[1])
    assert "sliding_window" in model_features(llama_window)
    assert kernel_for(llama_window) == (None, "no native layer for: sliding_window")
    llama_moe = build_model(preset("llama-tiny", moe={"num_experts": 2})[1])
    assert kernel_for(llama_moe)[0] is None
    qwen3_moe = build_model(preset("qwen3-tiny", moe={"num_experts": 2})[1])
    assert kernel_for(qwen3_moe) == (None, "no native layer for: moe")
    gpt_window = build_model(preset("gpt-tiny", sliding_window=8)[1])
    assert kernel_for(gpt_window)[0] is None


def test_a_checkpoint_of_another_family_names_both(tmp_path):
    import json

    from scratchlm.checkpoints.files import CheckpointError
    from scratchlm.checkpoints.hf import save_hf
    from scratchlm.checkpoints.load import load_pretrained

    torch.manual_seed(0)
    for src, claim in (("gemma3-tiny", "llama"), ("qwen3-tiny", "llama")):
        save_hf(build_model(preset(src)[1]), tmp_path / src)
        cfg_path = tmp_path / src / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["model_type"] = claim  # a config.json that says another family
        cfg.pop("layer_types", None)
        cfg_path.write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=rf"{src.split('-')[0]} checkpoint, but the "
                                                   rf"config describes a {claim} model"):
            load_pretrained(str(tmp_path / src))


def test_a_gpt_with_a_padded_vocabulary_saves_and_loads(tmp_path):
    import dataclasses

    import torch

    from scratchlm.checkpoints.load import load_pretrained
    from scratchlm.checkpoints.ours import class_head_size, save_pretrained

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(preset("gpt-tiny")[1], vocab_pad_multiple=64)).eval()
    assert model.out_head.out_features != model.cfg.vocab_size and class_head_size(model) is None
    save_pretrained(model, tmp_path)  # its padded head is not a classifier head
    x = torch.randint(0, model.cfg.vocab_size, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(str(tmp_path))(x), model(x))


# The same word meaning something else where it stands: (file, word) -> what it means there.
OTHER_MEANINGS = {("data/instruction.py", "gpt"): "ShareGPT's name for the assistant's turns",
                  ("tokenizers/spm_vocab.py", "llama"): "llama.cpp's name for a SentencePiece "
                                                        "vocabulary (tokenizer.ggml.model)"}


def test_family_knowledge_has_one_home():
    """A family's name (as a string) and its config class appear only in its module, the key
    maps (``models/convert/``) and the registry: every other module asks the registry."""
    import ast

    from conftest import ROOT
    from scratchlm.models.registry import FAMILIES

    names = set(FAMILIES)
    classes = {f.config_cls.__name__ for f in FAMILIES.values()}
    homes = {f"models/{f.model_cls.__module__.rsplit('.', 1)[-1]}.py" for f in FAMILIES.values()}
    homes |= {"models/registry.py"}
    bad = []
    for path in (ROOT / "scratchlm").rglob("*.py"):
        rel = path.relative_to(ROOT / "scratchlm").as_posix()
        if rel in homes or rel.startswith("models/convert/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names \
                    and (rel, node.value) not in OTHER_MEANINGS:
                bad.append(f"{rel}:{node.lineno} names the family {node.value!r}")
            elif isinstance(node, ast.Name) and node.id in classes:
                bad.append(f"{rel}:{node.lineno} uses {node.id}")
    assert not bad, "\n".join(bad)



def test_gguf_rules_live_on_their_architecture_rows():
    """``config_kwargs`` and ``config_metadata`` ask the architecture's ``ARCHS`` row: neither
    names an architecture, so a new one is a new row, not a new branch."""
    import ast
    import inspect

    from scratchlm.models.convert import gguf

    for fn in (gguf.config_kwargs, gguf.config_metadata):
        named = [node.value for node in ast.walk(ast.parse(inspect.getsource(fn)))
                 if isinstance(node, ast.Constant) and node.value in gguf.ARCHS]
        assert not named, f"{fn.__name__} branches on {named}"

def test_every_hub_repo_is_a_preset_of_its_family():
    from scratchlm.checkpoints.names import resolve
    from scratchlm.models.registry import FAMILIES

    for fam in FAMILIES.values():
        for name, repo in fam.hf_repos.items():
            assert name in fam.presets, name
            assert resolve(name).repo == repo

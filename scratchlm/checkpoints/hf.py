"""Hugging Face checkpoint folders: ``config.json`` + ``model.safetensors`` (or its shards) of
any family the registry knows by ``model_type``, read and written.

Not here: fetching them from the hub (``hub.py``), the key maps (``models/convert/hf_*.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from scratchlm.checkpoints.build import load_mapped
from scratchlm.checkpoints.files import (CheckpointError, iter_safetensors, read_json,
                                        save_safetensors)
from scratchlm.models.registry import family_for_hf, family_of


def load_hf(folder: str | Path, dtype: torch.dtype = torch.float32,
            device: str | torch.device = "cpu", **overrides) -> nn.Module:
    """A Hugging Face checkpoint folder of any family the registry knows by ``model_type``."""
    folder = Path(folder)
    hf_config = read_json(folder / "config.json")
    family = family_for_hf(hf_config.get("model_type"), str(folder / "config.json"))
    conv = family.hf()
    try:
        cfg = conv.config_from_hf(hf_config)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        cfg.__post_init__()
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    tensors = iter_safetensors(folder)
    if hasattr(conv, "join_tensors"):  # a format whose tensors come in parts (gpt-oss's MXFP4)
        tensors = conv.join_tensors(tensors, str(folder))
    return load_mapped(family.model_cls, cfg, tensors, conv.hf_to_ours, str(folder), dtype,
                       device)


def load_hf_gpt2(folder: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", **overrides):
    return load_hf(folder, dtype, device, **overrides)


def load_hf_llama(folder: str | Path, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu"):
    return load_hf(folder, dtype, device)


HF_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size ("5GB")


def save_hf_weights(state: dict[str, torch.Tensor], folder: Path,
                    max_shard_bytes: int = HF_SHARD_BYTES) -> list[str]:
    """``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` shards of at most
    ``max_shard_bytes`` (a tensor larger than that gets a shard of its own) with the index
    transformers reads; returns the file names."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t.contiguous()
        size += n
    if len(shards) == 1:
        save_safetensors(shards[0], folder / "model.safetensors")
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_safetensors(shard, folder / name)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                            for t in state.values())},
             "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [*names, "model.safetensors.index.json"]


def save_hf(model: nn.Module, folder: str | Path, dtype: torch.dtype = torch.float32,
            max_shard_bytes: int = HF_SHARD_BYTES, config: dict | None = None,
            head: dict[str, torch.Tensor] | None = None) -> Path:
    """Our model in its family's Hugging Face layout (``config.json`` + ``model.safetensors``
    or its shards), loadable by ``AutoModelForCausalLM.from_pretrained``; ``config``: more
    ``config.json`` keys (token ids); ``head``: tensors under HF names that stand in for the
    language-model head (a classifier's, ``export/hf.py``). Files are written under temporary
    names and renamed."""
    conv = family_of(model).hf()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = {**conv.config_to_hf(model.cfg), "torch_dtype": str(dtype).removeprefix("torch."),
                 **(config or {})}
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()
            if head is None or not k.startswith("out_head.")}
    cfg = model.cfg if head is None else dataclasses.replace(model.cfg, tie_embeddings=True)
    state = {**conv.state_dict_to_hf(ours, cfg), **(head or {})}
    save_hf_weights({k: v.to(dtype) for k, v in state.items()}, folder, max_shard_bytes)
    (folder / "config.json.part").write_text(json.dumps(hf_config, indent=2))
    os.replace(folder / "config.json.part", folder / "config.json")
    return folder


def save_hf_gpt2(model: nn.Module, folder: str | Path) -> Path:
    """Export our GPT to the HF GPT-2 layout, loadable by ``GPT2LMHeadModel.from_pretrained``."""
    return save_hf(model, folder)

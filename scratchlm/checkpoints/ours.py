"""Our own folders: ``config.json`` ({"scratchlm": {"family", "config"}}, a classifier head's
size, the base of a delta) + ``model.safetensors``, read and written.

Not here: a delta's tensors over its base (``delta.py``); what a model name is (``names.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from scratchlm.checkpoints.build import materialize
from scratchlm.checkpoints.files import (CheckpointError, iter_safetensors, read_json,
                                        save_safetensors, unique_state_dict)
from scratchlm.models.registry import family_named, family_of
from scratchlm.nn.meta import meta_device


def class_head_size(model: nn.Module) -> int | None:
    """The number of outputs of a classifier or reward head (``finetune/classification.py``,
    ``finetune/reward.py``); None for a language-model head (vocabulary-sized, padded or not)."""
    head = getattr(model, "out_head", None)
    if not isinstance(getattr(head, "out_features", None), int):  # nn.Linear, or LoRA on one
        return None
    cfg = model.cfg
    vocab = {cfg.vocab_size, getattr(cfg, "padded_vocab_size", cfg.vocab_size)}
    return None if head.out_features in vocab else head.out_features


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Our layout: ``config.json`` ({"scratchlm": {"family", "config"}}) + ``model.safetensors``.
    Files are written under temporary names and renamed, so a crash leaves no half file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(unique_state_dict(model), folder / "model.safetensors")
    (folder / "trained.safetensors").unlink(missing_ok=True)  # a previous delta (delta.py)
    return write_config(model, folder)


def write_config(model: nn.Module, folder: Path, base: dict | None = None,
                 untie: bool = False) -> Path:
    """Our ``config.json``: the family, its config, a classifier head's size, and for a run
    stored as a delta (``delta.py``) the base it applies to."""
    config = model.cfg.to_dict()
    if untie and config.get("tie_embeddings"):
        config["tie_embeddings"] = False
    meta = {"scratchlm": {"family": family_of(model).name, "config": config}}
    classes = class_head_size(model)
    if classes is not None:
        meta["scratchlm"]["num_classes"] = classes  # a classifier head
        head = getattr(model.out_head, "quantized", None) or model.out_head  # (QLoRA: 4-bit)
        if getattr(head, "bias", None) is None:
            meta["scratchlm"]["head_bias"] = False
    if base is not None:
        meta["scratchlm"]["base"] = base
    (folder / "config.json.part").write_text(json.dumps(meta, indent=2))
    os.replace(folder / "config.json.part", folder / "config.json")
    return folder


def load_ours(folder: str | Path, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu",
              state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A model from our folder: its ``model.safetensors``, or ``state`` (a delta's tensors
    merged over its base, ``delta.delta_state``)."""
    folder = Path(folder)
    meta = read_json(folder / "config.json")["scratchlm"]
    try:
        family = family_named(meta["family"])
        cfg = family.config(meta["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    with meta_device():
        model = family.model_cls(cfg)
        if "num_classes" in meta:  # a classifier (finetune/classification.py)
            model.out_head = nn.Linear(model.cfg.n_embd, meta["num_classes"],
                                       bias=meta.get("head_bias", True))
    if state is None:
        state = {k: t.to(device=device, dtype=dtype) for k, t in iter_safetensors(folder)}
    return materialize(model, state, str(folder))

"""A model filled from a checkpoint's tensors: built on the meta device, every key and shape
checked against it, then the tensors assigned (no second copy of the weights in memory).

Not here: reading the files (``files.py``), each format's key map (``models/convert/``).
"""

from __future__ import annotations

import torch
from torch import nn

from scratchlm.checkpoints.files import CheckpointError
from scratchlm.models.registry import family_of, family_of_weights
from scratchlm.nn.meta import meta_device


def _family_hint(keys, model: nn.Module) -> str:
    """" (the weights are a <family> checkpoint, but the config describes a <family> model)"
    when ``keys`` carry another family's weight names than ``model``'s, else ""."""
    try:
        ours = family_of(model).name
    except ValueError:
        return ""
    found = family_of_weights(keys)
    if found == ours:
        return ""
    return f" (the weights are a {found} checkpoint, but the config describes a {ours} model)"


def materialize(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Assign ``state`` onto a model built on the meta device, checking keys and shapes."""
    expected = model.state_dict()
    tied = (getattr(getattr(model, "cfg", None), "tie_embeddings", False)
            and getattr(model.out_head, "weight", None) is model.tok_emb.weight)
    optional = {"out_head.weight"} if tied else set()
    for key, tensor in state.items():
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected key {key!r} {tuple(tensor.shape)}"
                                  + _family_hint(state, model))
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(tensor.shape)}, the "
                                  f"model expects {tuple(expected[key].shape)}")
    missing = sorted(set(expected) - set(state) - optional)
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing[:5]}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                              + _family_hint(state, model))
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.out_head.weight = model.tok_emb.weight
    return model


def _pad_vocab(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def load_mapped(model_cls, cfg, tensors, convert, source: str,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Build ``model_cls(cfg)`` on the meta device and fill it from ``tensors`` ((key, tensor)
    pairs) through ``convert(key, tensor, cfg) -> [(our key or None to skip, tensor), ...]``."""
    with meta_device():
        model = model_cls(cfg)
    state = {}
    for key, tensor in tensors:
        try:
            pairs = list(convert(key, tensor, cfg))
        except KeyError:
            raise CheckpointError(f"{source}: unexpected key {key!r}"
                                  + _family_hint([key], model)) from None
        for ours, t in pairs:
            if ours is None or (ours == "out_head.weight" and cfg.tie_embeddings):
                continue
            if ours in ("tok_emb.weight", "out_head.weight"):
                t = _pad_vocab(t, cfg.padded_vocab_size)
            state[ours] = t.to(device=device, dtype=dtype).contiguous()
    return materialize(model, state, source)

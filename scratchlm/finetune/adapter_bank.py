"""Several LoRA adapters over one base model, by name: switch the one that is active
(``set_adapter``), or give each row of a batch its own (``set_row_adapters``: what a server
with many adapters does, the base matmul once for every row and each row's low-rank update on
top). Adapters may differ in rank, alpha and targets; layers an adapter does not target are
plain for it. Nothing is merged or copied when switching.

    y[rows of a] = W x + scale_a * B_a A_a x      y[rows of b] = W x + scale_b * B_b A_b x
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scratchlm.finetune.lora import apply_lora, lora_modules


def add_named_adapter(model: nn.Module, name: str, folder) -> None:
    """Load an adapter folder (``save_adapter``'s) under ``name`` next to those already on the
    model, and make it the active one. An adapter trained for another base (other layer names
    or sizes) is refused, naming the folder and the first difference."""
    from pathlib import Path

    from safetensors.torch import load_file

    from scratchlm.checkpoints.delta import read_lora_settings

    folder = Path(folder)
    if not (folder / "lora.json").is_file():
        raise FileNotFoundError(f"{folder}: no lora.json (an adapter saved by scratchlm "
                                "finetuning is needed here)")
    s = read_lora_settings(folder / "lora.json")
    state = load_file(folder / "adapter.safetensors")
    bank = _bank(model)
    try:
        if not lora_modules(model):
            apply_lora(model, s["rank"], s["alpha"], tuple(s["targets"]), 0.0, s["scaling"])
        else:  # wrap what this adapter targets and no earlier one did
            try:
                apply_lora(model, s["rank"], s["alpha"], tuple(s["targets"]), 0.0, s["scaling"],
                           freeze_base=False)
            except ValueError:
                pass  # every target is wrapped already
    except ValueError as e:
        raise ValueError(f"{folder}: adapter does not fit this model: {e}") from None
    scale = s["alpha"] if s["scaling"] == "book" else s["alpha"] / s["rank"]
    entry, used = {}, set()
    for path, m in lora_modules(model).items():
        if not hasattr(m, "all_parts"):  # the parts this layer can adapt, before any switch
            m.all_parts = dict(m.parts)
        a, b = nn.ModuleDict(), nn.ModuleDict()
        for part, sl in m.all_parts.items():
            ka, kb = f"{path}.lora_A.{part}.weight", f"{path}.lora_B.{part}.weight"
            if ka not in state:
                continue
            want = {ka: (s["rank"], m.in_features), kb: (sl.stop - sl.start, s["rank"])}
            for key, shape in want.items():
                if kb not in state or tuple(state[key].shape) != shape:
                    got = tuple(state[key].shape) if key in state else "missing"
                    raise ValueError(f"{folder}: adapter was trained for a different base model "
                                     f"({key}: {got}, this model needs {shape})")
            dev = next(m.parameters()).device
            a[part] = nn.Linear(m.in_features, s["rank"], bias=False, device=dev)
            b[part] = nn.Linear(s["rank"], sl.stop - sl.start, bias=False, device=dev)
            a[part].weight.data.copy_(state[ka])
            b[part].weight.data.copy_(state[kb])
            used |= {ka, kb}
        if len(a):
            entry[path] = (a, b, scale)
    if used != set(state):
        raise ValueError(f"{folder}: adapter tensors {sorted(set(state) - used)[:3]} match no "
                         "layer of this model (trained for a different base model?)")
    bank[name] = entry
    set_adapter(model, name)


def _bank(model: nn.Module) -> dict:
    if not hasattr(model, "_lora_bank"):
        object.__setattr__(model, "_lora_bank", {})  # plain attribute: not a submodule
    return model._lora_bank


def adapter_names(model: nn.Module) -> list[str]:
    return list(_bank(model))


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make the named adapter active (``None``: the base model). Switching swaps module
    references; nothing is copied or merged."""
    bank = _bank(model)
    if name is not None and name not in bank:
        raise KeyError(f"no adapter named {name!r}; loaded: {list(bank)}")
    for path, m in lora_modules(model).items():
        m.row_groups = None
        if name is None or path not in bank[name]:
            m.enabled = False
            continue
        a, b, scale = bank[name][path]
        m.lora_A, m.lora_B, m.scale = a, b, scale
        m.parts = {p: m.all_parts[p] for p in a}
        m.rank = a[next(iter(a))].out_features
        m.enabled = True
    object.__setattr__(model, "active_adapter", name)


def set_row_adapters(model: nn.Module, names: Sequence[str | None]) -> None:
    """Each batch row's adapter for the forwards that follow (``None``: the base model for that
    row); ``set_adapter`` returns to one adapter for all rows."""
    bank = _bank(model)
    unknown = {n for n in names if n is not None} - set(bank)
    if unknown:
        raise KeyError(f"no adapter named {sorted(unknown)[0]!r}; loaded: {list(bank)}")
    device = next(model.parameters()).device
    rows = {n: torch.tensor([i for i, m in enumerate(names) if m == n], device=device)
            for n in dict.fromkeys(names) if n is not None}
    for path, m in lora_modules(model).items():
        m.row_groups = [(idx, *bank[n][path]) for n, idx in rows.items() if path in bank[n]]

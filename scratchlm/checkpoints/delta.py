"""A finetuned model stored as what it trained, over the base it started from.

A LoRA run changes 2-5% of a model's numbers; writing the whole model again (540 MB for
SmolLM2-135M in fp32) for a 23 MB adapter is what filled a demo's disk. So a run with a
frozen base writes its ``final/`` as

    config.json            our layout's config, with {"base": {"model": BASE}}: a preset name
                           or the base folder's absolute path (another run's final/ works too;
                           a relative path is read from the folder holding this file)
    adapter/               the LoRA (``lora.json`` + ``adapter.safetensors``, finetune/lora.py),
                           also what ``--adapter`` and the PEFT export read
    trained.safetensors    every other trained tensor (a classifier head, the last blocks)
    tokenizer files

and ``load_pretrained(final)`` rebuilds the finetuned model: the base's weights, the trained
tensors over them, and each adapter folded in, ``W[rows] += scale * B @ A`` (the rows of a
fused ``qkv`` part, all rows otherwise). The result is the merged model a full save would
have held (``--lora.save_merged`` still writes that).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scratchlm.checkpoints.files import CheckpointError, read_json
from scratchlm.checkpoints.names import is_preset
from scratchlm.checkpoints.ours import write_config


def base_reference(base: str, relative_to: str | Path | None = None) -> str:
    """How config.json names the base: a preset as it is, a path made absolute (the run's
    folder may be read from anywhere). A relative path read from a config.json is relative to
    the folder holding it (``relative_to``), not to wherever the reader was started."""
    if is_preset(base):
        return base
    path = Path(base)
    if relative_to is not None and not path.is_absolute():
        path = Path(relative_to) / path
    return str(path.resolve())


def _named_base(ref: str) -> str | None:
    """The base a delta folder's config.json names; None for anything that is not a delta
    (a preset, a file, full weights, a damaged config: its loading reports those)."""
    folder = Path(ref)
    if is_preset(ref) or not (folder / "config.json").is_file() or (
            folder / "model.safetensors").is_file():
        return None
    try:
        base = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        name = base["scratchlm"]["base"]["model"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and name else None


def base_chain(name: str) -> list[str]:
    """``name`` and every base it loads through, nearest first, each as ``base_reference``
    writes it. Folders naming each other (or themselves) would load each other until Python's
    recursion limit: that cycle is a CheckpointError naming the folders."""
    chain = [base_reference(name)]
    while (base := _named_base(chain[-1])) is not None:
        nxt = base_reference(base, relative_to=chain[-1])
        if nxt in chain:
            loop = " -> ".join(chain[chain.index(nxt):] + [nxt])
            raise CheckpointError(f"{Path(chain[-1]) / 'config.json'}: its base {base!r} "
                                  f"leads back to itself ({loop}); a base must hold weights of "
                                  "its own")
        chain.append(nxt)
    return chain


def save_delta(model: nn.Module, folder: str | Path, base: str) -> Path:
    """``config.json`` naming ``base`` and ``trained.safetensors`` (the trainable tensors that
    are not LoRA adapters; those are in ``adapter/``, see ``finetune/lora.save_adapter``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trained = {k: p.detach().contiguous().cpu() for k, p in model.named_parameters()
               if p.requires_grad and ".lora_" not in k}
    if trained:
        save_file(trained, folder / "trained.safetensors.part", metadata={"format": "pt"})
        (folder / "trained.safetensors.part").replace(folder / "trained.safetensors")
    else:
        (folder / "trained.safetensors").unlink(missing_ok=True)
    head_adapted = any(k.startswith("out_head.lora_") for k, _ in model.named_parameters())
    # an adapted head that was tied to the embedding is untied once merged
    write_config(model, folder, base={"model": base_reference(base)},
                 untie=head_adapted)
    (folder / "model.safetensors").unlink(missing_ok=True)  # a previous full save
    return folder


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file "
                              f"({' '.join(str(e).split())})") from None


def delta_state(folder: str | Path, base: dict, dtype: torch.dtype,
                device: str | torch.device, load_base) -> dict[str, torch.Tensor]:
    """The merged state dict of a ``final/`` written by ``save_delta``; ``load_base(name,
    dtype, device, progress=False)`` loads the base (``load.load_pretrained``: the loader is
    passed in, so this module never imports the one that imports it)."""
    folder = Path(folder)
    name = base.get("model") if isinstance(base, dict) else None
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{folder / 'config.json'}: 'base' names no model")
    base_chain(str(folder))  # a cycle is named here, before it recurses
    name = base_reference(name, relative_to=folder)
    if not is_preset(name) and not Path(name).exists():
        raise CheckpointError(f"{folder / 'config.json'}: its base model {name} is missing; this "
                              "folder holds only what its run trained (write a whole model "
                              "with --lora.save_merged true)")
    state = dict(load_base(name, dtype, device, progress=False).state_dict())
    if (folder / "trained.safetensors").is_file():
        for k, t in _read(folder / "trained.safetensors").items():
            state[k] = t.to(device=device, dtype=dtype)
    adapter = folder / "adapter"
    if (adapter / "lora.json").is_file():
        merge_adapter(state, adapter)
    return state


def _finite(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _rows_ok(parts) -> bool:
    """``{"module": {"part": [start, stop], ...}, ...}`` with 0 <= start < stop."""
    def span(r) -> bool:
        return (isinstance(r, list) and len(r) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in r) and 0 <= r[0] < r[1])
    return isinstance(parts, dict) and all(
        isinstance(m, dict) and all(span(r) for r in m.values()) for m in parts.values())


def read_lora_settings(path: str | Path) -> dict:
    """``lora.json`` (``finetune/lora.save_adapter``'s) with every field checked, and the
    optional ones filled in: a NaN alpha or a rank of 0 would otherwise merge into weights
    whose every token decodes as "!". Read here, below finetune/, since loading a delta needs
    it; ``finetune/lora.py`` reads it through this too."""
    s = {"scaling": "book", "dropout": 0.0, "parts": {}, **read_json(Path(path))}
    checks = {
        "rank": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 "an integer >= 1"),
        "alpha": (_finite, "a finite number"),
        "targets": (lambda v: isinstance(v, list) and v and all(isinstance(t, str) for t in v),
                    "a non-empty list of names"),
        "scaling": (lambda v: v in ("book", "peft"), "'book' or 'peft'"),
        "dropout": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
        "parts": (_rows_ok, "{module: {part: [start, stop]}}"),
    }
    for field, (ok, want) in checks.items():
        if field not in s:
            raise CheckpointError(f"{path}: {field!r} is missing ({want})")
        if not ok(s[field]):
            raise CheckpointError(f"{path}: {field!r} must be {want}, got {s[field]!r}")
    return s


def merge_adapter(state: dict[str, torch.Tensor], adapter: Path) -> None:
    """Fold ``adapter/`` into ``state``'s weights, in place (each weight is replaced, so a head
    tied to the embedding leaves the embedding as it was)."""
    settings = read_lora_settings(adapter / "lora.json")
    scale = (settings["alpha"] if settings["scaling"] == "book"
             else settings["alpha"] / settings["rank"])
    parts = settings["parts"]
    weights = _read(adapter / "adapter.safetensors")
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        module, rest = key.split(".lora_A.", 1)
        part = rest.removesuffix(".weight")
        b = weights.get(f"{module}.lora_B.{part}.weight")
        target = f"{module}.weight"
        if b is None or target not in state:
            raise CheckpointError(f"{adapter / 'adapter.safetensors'}: {key} has no lora_B or "
                                  "no base weight to adapt")
        w = state[target].clone()
        rows = parts.get(module, {}).get(part, [0, w.shape[0]])
        delta = scale * (b.to(torch.float32) @ a.to(torch.float32))
        if tuple(delta.shape) != (rows[1] - rows[0], w.shape[1]):
            raise CheckpointError(f"{adapter / 'adapter.safetensors'}: {key} does not fit "
                                  f"{target} {tuple(w.shape)}; the adapter is for another base")
        w[rows[0]:rows[1]] += delta.to(w.dtype)
        state[target] = w

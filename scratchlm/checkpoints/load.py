"""Load a model for use: by any name ``names.resolve`` knows, with its tokenizer, optionally
quantized for inference.

``load_pretrained(name_or_path)`` accepts
- a preset with published weights (``"gpt2-124m"`` ... ``"gpt2-1558m"``), fetched from the
  Hugging Face hub by ``hub.py``, or the embedded SmolLM2 GGUF file;
- a GGUF file;
- a folder holding ``config.json`` and ``model.safetensors`` (or shards listed in
  ``model.safetensors.index.json``) in either our layout or a supported HF layout, or a run's
  ``final/`` holding only what it trained over its base (``delta.py``).

Weights are read with safetensors (never unpickled) one tensor at a time into a model built on
the meta device, so a checkpoint never needs two full copies in memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scratchlm.checkpoints.delta import delta_state
from scratchlm.checkpoints.files import CheckpointError, read_json
from scratchlm.checkpoints.gguf import load_gguf
from scratchlm.checkpoints.hf import load_hf
from scratchlm.checkpoints.names import ModelName, known_names, resolve
from scratchlm.checkpoints.ours import load_ours
from scratchlm.models.registry import family_for_hf


def auto_quantize(name: str, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> str | None:
    """What ``quantize="auto"`` loads for a GGUF model decoded in float32 on the CPU: the file's
    own blocks with decode-step activations rounded to 8 bits (``"gguf-a8"``, llama.cpp's
    arithmetic) when the built kernel has that integer path for every block format of the file
    (``nn/native.act8_block_formats``: x86 with AVX2, aarch64); else the blocks multiplied in float32
    (``"gguf"``) when it vectorizes them (``nn/native.simd_block_formats``: all of them with
    AVX-512 or AVX2, none in the portable build); else ``"int8"``, which every build runs at
    vector speed; None (the weights as stored) for anything else. The blocks hold the file's
    exact weights in 0.18x fp32's memory and decode faster than int8 where their kernel is
    vectorized; through the generic path they decoded at 0.4x int8's speed (docs/llama.md)."""
    cpu = torch.device(device).type == "cpu"
    ref = resolve(name)
    if not (ref.is_gguf and cpu and dtype == torch.float32):
        return None
    from scratchlm.models.convert.gguf_layout import read_layout
    from scratchlm.nn.native import act8_block_formats, simd_block_formats

    _, tensors = read_layout(ref.gguf_path())
    stored = {t.tensor_type.name for t in tensors} - {"F32", "F16", "BF16"}
    if stored <= act8_block_formats():
        return "gguf-a8"
    return "gguf" if stored <= simd_block_formats() else "int8"


def load_model_and_tokenizer(name: str, dtype: torch.dtype = torch.float32,
                             device: str | torch.device = "cpu", progress: bool = True,
                             quantize: str | None = None):
    """(model, tokenizer) for a preset, a GGUF file or a model folder; ``quantize="int8"``
    stores the Linear weights as int8 for inference (see nn/quant.py); ``"gguf"`` keeps a GGUF
    file's Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K blocks as they are (nn/gguf_linear.py);
    ``"gguf-a8"`` the same with a decode step's activations rounded to 8 bits, integer dot
    products as llama.cpp's (csrc/act8.h); ``"auto"``: one of those for a GGUF file (the
    embedded SmolLM2 included) run in float32 on the CPU, else full precision
    (``auto_quantize``); ``"none"`` (or None): the weights as stored."""
    from scratchlm.tokenizers import folder_tokenizer

    ref = resolve(name)
    if quantize == "auto":
        quantize = auto_quantize(name, device, dtype)
    elif quantize == "none":  # what a flag can say for None: the weights as stored
        quantize = None
    blocks = quantize in ("gguf", "gguf-a8")
    if blocks and not ref.is_gguf:
        raise ValueError(f"quantize {quantize!r} keeps a GGUF file's own blocks; {name} is not "
                         "a .gguf file (use 'int8')")
    if quantize == "gguf-a8" and (torch.device(device).type != "cpu" or dtype != torch.float32):
        raise ValueError("quantize 'gguf-a8' is the CPU's float32 decode path; use 'gguf' for "
                         f"{device} / {dtype}")
    if ref.is_gguf:
        model, tok = load_gguf(ref.gguf_path(), dtype, device, keep_quantized=blocks)
    else:
        folder = resolve_folder(ref, progress)
        model = load_pretrained(str(folder), dtype, device, progress)
        tok = folder_tokenizer(folder)
    if quantize == "int8":
        from scratchlm.nn.fuse import fuse_projections
        from scratchlm.nn.quant import quantize_int8

        quantize_int8(model)
        fuse_projections(model)  # int8 models only run: fewer, larger matvecs per token
    elif blocks:
        from scratchlm.nn.fuse import fuse_projections
        from scratchlm.nn.gguf_linear import round_activations

        if quantize == "gguf-a8":
            round_activations(model)
        fuse_projections(model, skip_mixed=True)  # blocks of one format fuse as int8 rows do
    elif quantize is not None:
        raise ValueError(f"quantize must be none, int8, gguf, gguf-a8 or auto, got "
                         f"{quantize!r}")
    return model.eval(), tok


def resolve_folder(name: str | ModelName, progress: bool = True) -> Path:
    """A local folder with config.json for a preset (downloaded) or a path."""
    ref = name if isinstance(name, ModelName) else resolve(name)
    if ref.kind == "hub":
        from scratchlm.checkpoints.hub import fetch_hf_repo

        return fetch_hf_repo(ref.repo, progress=progress)
    folder = Path(ref.name)
    if not (folder / "config.json").is_file():
        known = ", ".join(known_names())
        raise FileNotFoundError(f"{ref.name!r} is neither a preset with weights ({known}) nor a "
                                "folder with config.json")
    return folder


def load_pretrained(name: str, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", progress: bool = True) -> nn.Module:
    """A model with weights, from a preset name or a folder (see the module docstring)."""
    ref = resolve(name)
    if ref.is_gguf:
        return load_gguf(ref.gguf_path(), dtype, device, tokenizer=False)[0].eval()
    folder = resolve_folder(ref, progress)
    config = read_json(folder / "config.json")
    if "scratchlm" in config:
        if not isinstance(config["scratchlm"], dict):
            raise CheckpointError(f"{folder / 'config.json'}: 'scratchlm' is not an object")
        state = None
        if "base" in config["scratchlm"] and not (folder / "model.safetensors").is_file():
            state = delta_state(  # what a run trained, over its base
                folder, config["scratchlm"]["base"], dtype, device, load_pretrained)
        model = load_ours(folder, dtype, device, state)
    else:
        try:
            family_for_hf(config.get("model_type"), str(folder / "config.json"))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        model = load_hf(folder, dtype, device)
    return model.eval()

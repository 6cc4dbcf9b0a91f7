"""llama.cpp's GGUF files: a model (dequantized, or keeping its quantized blocks) and its
tokenizer from one file.

Not here: the header walk and tensor names (``models/convert/gguf*.py``), the tokenizer
(``gguf_tokenizer.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from scratchlm.checkpoints.build import load_mapped
from scratchlm.models.registry import family_for_gguf


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu", tokenizer: bool = True,
              keep_quantized: bool = False):
    """(model, tokenizer) from a llama.cpp GGUF file of any architecture the registry reads
    (gpt2, llama, qwen3, qwen3moe, gemma3, gemma4, olmo2, gpt-oss, qwen35, qwen35moe), dequantized to ``dtype``, with its tokenizer (byte-level
    BPE or SentencePiece); ``tokenizer=False``: the model alone (tokenizer None).
    ``keep_quantized``: Linear weights and the embedding table stored as one of the block formats
    the native kernels read (``nn/gguf_linear.KEPT``)
    stay in those blocks (``nn/gguf_linear.py``), a tied head sharing the table's bytes; for
    inference on the CPU in float32."""
    from scratchlm.models.convert.gguf import (ARCHS, ROPE_FREQS, GGUFError, config_kwargs,
                                               dequantize, iter_tensors, read_gguf)
    from scratchlm.checkpoints.gguf_tokenizer import gguf_tokenizer

    meta, reader = read_gguf(path)
    arch = meta.get("general.architecture")
    try:
        family = family_for_gguf(arch, str(path))
    except ValueError as e:
        raise GGUFError(str(e)) from None
    names = {t.name for t in reader.tensors}
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    try:
        kwargs = config_kwargs(meta, str(path))  # GGUFError naming the file and field
    except GGUFError:
        raise
    except ValueError as e:
        raise GGUFError(f"{path}: {e}") from None
    if "qkv_bias" in fields:
        kwargs["qkv_bias"] = any(n.endswith((".attn_q.bias", ".attn_qkv.bias")) for n in names)
    if ARCHS[arch].from_names is not None:  # what only the tensors say (Gemma 4's k = v)
        kwargs.update(ARCHS[arch].from_names(names))
    if ROPE_FREQS in names:  # Llama 3's RoPE scaling, Gemma 4's proportional RoPE
        if not ARCHS[arch].rope_freqs:
            raise GGUFError(f"{path}: rope_freqs in a {arch} file is not supported")
        freqs = next(t for t in reader.tensors if t.name == ROPE_FREQS)
        factors = dequantize(freqs.data, freqs.tensor_type.name, (int(np.prod(freqs.shape)),))
        kwargs.update(ARCHS[arch].rope_freqs[0](factors, kwargs, str(path)))
    try:
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
        keep_blocks(model, tensors, lambda name, blocks: () if conv.moves_columns(name)
                    else conv.convert(name, blocks, cfg), cfg.tie_embeddings)
    return model, gguf_tokenizer(meta, str(path)) if tokenizer else None

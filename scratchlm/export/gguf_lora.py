"""A LoRA adapter as a llama.cpp GGUF adapter file: what ``llama-cli --lora`` and Ollama's
``ADAPTER`` line apply to the base model's GGUF, instead of a merged copy per adapter.

    write_gguf_lora(model_with_adapters, "adapter.gguf")

The file holds ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``
and, for each adapted matrix, ``<its GGUF name>.lora_a`` (rank x in) and ``.lora_b`` (out x
rank), the names the base file's tensors have (``models/convert/gguf.Arch``). llama.cpp adds
``alpha / rank * B @ A`` to the base weight, so alpha is written as our scale times the rank.
A projection adapted in parts (GPT-2's fused q/k/v) becomes one adapter of the summed rank:
the parts' A stacked, their B placed block-diagonally; where that makes a matrix's rank (or
scale) differ from the first one's, its B carries the ratio, since the file has one alpha.
Llama's q/k rows are permuted as the base weights are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from scratchlm.export.atomic import gguf_file
from scratchlm.export.gguf import gguf_arch
from scratchlm.export.quant_mix import DTYPES, encode_tensor
from scratchlm.finetune.lora import lora_modules
from scratchlm.models.convert.gguf import ARCHS, GGUFError, permute



def _gguf_name(arch: str, module: str) -> str:
    """``trf_blocks.3.att.q_proj`` -> ``blk.3.attn_q.weight``."""
    table = ARCHS[arch]
    key = f"{module}.weight"
    top = {ours: name for name, ours in table.top.items()}
    if key in top:
        return top[key]
    block = {ours: name for name, ours in table.block.items()}
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] == "trf_blocks" and parts[2] in block:
        return f"blk.{parts[1]}.{block[parts[2]]}"
    raise GGUFError(f"{module} has no tensor of its own in llama.cpp's {arch} file, so a LoRA "
                    "adapter on it cannot be applied there (adapt the attention and MLP "
                    "projections, or merge the adapter: --format gguf)")


def _one_adapter(m) -> tuple[np.ndarray, np.ndarray]:
    """(A (R, in), B (out, R)) with B @ A = sum over parts of B_part @ A_part in place."""
    a = torch.cat([m.lora_A[n].weight.detach().float() for n in m.parts])
    b = torch.zeros(m.out_features, a.shape[0])
    col = 0
    for name, sl in m.parts.items():
        part = m.lora_B[name].weight.detach().float()
        b[sl, col:col + part.shape[1]] = part
        col += part.shape[1]
    return a.numpy(), b.numpy()


def write_gguf_lora(model: nn.Module, path: str | Path, dtype: str = "f32",
                    name: str = "") -> Path:
    """Write the LoRA adapters of ``model`` (loaded, not merged) as a GGUF adapter file."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters to write")
    arch, cfg = gguf_arch(model), model.cfg
    tied = getattr(cfg, "tie_embeddings", False)
    tensors = []
    for module, m in mods.items():
        if m.merged:
            raise ValueError(f"{module}: the adapter is merged into the weight; load it unmerged")
        target = _gguf_name(arch, module)
        if target == "output.weight" and tied:
            raise GGUFError("a LoRA on the tied output head cannot be applied by llama.cpp: the "
                            "base file has no output.weight (merge it: --format gguf)")
        a, b = _one_adapter(m)
        rules = ARCHS[arch]
        if rules.permute_qk and target.endswith("attn_q.weight"):
            b = permute(b, cfg.n_head)
        elif rules.permute_qk and target.endswith("attn_k.weight"):
            b = permute(b, cfg.n_kv_head)
        elif rules.fix is not None:  # the base file's order (Qwen3.5's value heads): B's rows
            short = target.split(".", 2)[-1]  # or, for a column reorder, A's columns
            if rules.moves_columns(target):
                a = rules.fix[1](short, a, cfg)
            else:
                b = rules.fix[1](short, b, cfg)
        tensors.append((target, a, b, m.scale))
    # llama.cpp scales each matrix by alpha / its rank: alpha is the first matrix's scale times
    # its rank, and a matrix whose scale or rank differs (a fused projection adapted in parts
    # sums its parts' ranks) carries the difference in B
    alpha = tensors[0][3] * tensors[0][1].shape[0]
    tensors = [(t, a, b * (scale * a.shape[0] / alpha) if scale * a.shape[0] != alpha else b)
               for t, a, b, scale in tensors]
    path = Path(path)
    with gguf_file(path, arch) as w:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        w.add_name(name or path.stem)
        for target, a, b in tensors:
            for suffix, array in ((".lora_a", a), (".lora_b", b)):
                data, qtype = encode_tensor(target + suffix, np.ascontiguousarray(array), dtype)
                w.add_tensor(target + suffix, data, raw_dtype=qtype)
    return path

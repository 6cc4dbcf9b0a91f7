"""Which GGML type each tensor of a GGUF file gets for a llama.cpp file type (``--quant``).

The file types are the ones users pick (``q4_k_m`` is llama.cpp's and Ollama's usual choice),
and each is a mix, not one type: the rules below are those of llama.cpp's
``llama_model_quantize`` without an importance matrix (``llama_tensor_get_type`` in
src/llama-quant.cpp), for the architectures we write:

    default          Q4_0 | Q8_0 | Q4_K (q4_k_s, q4_k_m) | Q5_K (q5_k_s, q5_k_m) | Q6_K
    output head      Q6_K (Q8_0 files: Q8_0; a row that is not whole default blocks: Q8_0);
                     with tied embeddings the token embedding is the head
    attn_v           q4_k_m / q5_k_m: Q6_K in the layers use_more_bits picks; q4_k_s: Q5_K in
                     the first 4; 8 experts: Q8_0; a 70B (80 layers, GQA) Q4_K: Q5_K
    attn_k           8 experts: Q8_0
    attn_output      8 experts, q4_k_s / q4_k_m: Q5_K
    ffn_down         q4_k_m / q5_k_m: Q6_K where use_more_bits; q4_k_s: Q5_K in the first 1/8
    not quantized    1-D tensors, norms, routers (ffn_gate_inp), position embeddings
    fallback         a row that is not whole blocks of the chosen type: Q4_K -> Q5_0,
                     Q5_K -> Q5_1, Q6_K -> Q8_0, then F16 if still not whole blocks

So a model whose width is not a multiple of 256 (SmolLM2's 576) gets mostly Q5_0 / Q5_1 /
Q8_0 in a K-quant file, as it does from llama.cpp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from scratchlm.export.quants import BLOCK_LEN, quantize


@dataclass(frozen=True)
class FileType:
    name: str      # what --quant takes
    code: int      # general.file_type (llama_ftype)
    default: str   # the GGML type of most matrices


FILE_TYPES = {f.name: f for f in (
    FileType("q8_0", 7, "Q8_0"), FileType("q4_0", 2, "Q4_0"),
    FileType("q4_k_s", 14, "Q4_K"), FileType("q4_k_m", 15, "Q4_K"),
    FileType("q5_k_s", 16, "Q5_K"), FileType("q5_k_m", 17, "Q5_K"),
    FileType("q6_k", 18, "Q6_K"),
)}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
DTYPES = ("f32", "f16", "bf16")  # the float types of what a mix leaves unquantized
NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d.weight",
                 "per_layer_model_proj")


@dataclass(frozen=True)
class ModelShape:
    """What of the model the rules look at."""
    n_layer: int
    n_expert: int = 0
    tied: bool = False      # no output.weight: the token embedding is the head
    is_70b: bool = False    # llama.cpp's LLM_TYPE_70B: 80 layers and n_head != n_kv_head
    # the layers with a value projection where not all have one (Gemma 4's KV-shared and
    # keys-as-values layers): llama.cpp counts attn_v tensors, not layers, for its extra bits
    attn_v_layers: tuple[int, ...] | None = None


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """The layers whose attn_v / ffn_down get more bits: the first and last eighth and every
    third one between."""
    return (i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8
            or (i_layer - n_layer // 8) % 3 == 2)


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of 1 do not count (numpy order is reversed ne)."""
    ne = list(reversed(shape))
    return max([i + 1 for i in range(1, len(ne)) if ne[i] > 1] + [1])


def layer_of(name: str) -> int:
    """The block index of a GGUF tensor name (``blk.3.attn_v.weight`` -> 3), -1 outside blocks."""
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _fits(cols: int, qtype: str) -> bool:
    return cols % (BLOCK_LEN[qtype] if qtype in BLOCK_LEN else 1) == 0


def tensor_type(name: str, shape: tuple[int, ...], ftype: str, model: ModelShape) -> str | None:
    """The GGML type of the tensor ``name`` (llama.cpp's GGUF name) of ``shape`` (numpy order:
    rows last) in a ``ftype`` file, or None where it is not quantized (kept in the file's
    float type)."""
    default = FILE_TYPES[ftype].default
    if (_n_dims(shape) < 2 or not name.endswith("weight") or any(s in name for s in NOT_QUANTIZED)
            or name in ("position_embd.weight", "token_types.weight")):
        return None
    cols, i, n = shape[-1], layer_of(name), model.n_layer
    qtype = default
    if name == "output.weight" or (model.tied and name == "token_embd.weight"):
        if not _fits(cols, default):
            qtype = "Q8_0"
        elif qtype != "Q8_0":
            qtype = "Q6_K"
    elif name.endswith(("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")):
        if model.attn_v_layers is not None:  # the i-th of n value projections
            i, n = model.attn_v_layers.index(i), len(model.attn_v_layers)
        if ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            qtype = "Q6_K"
        elif ftype == "q4_k_s" and i < 4:
            qtype = "Q5_K"
        if model.is_70b and qtype == "Q4_K":
            qtype = "Q5_K"
        if model.n_expert == 8:
            qtype = "Q8_0"
    elif name.endswith("attn_k.weight"):
        if model.n_expert == 8:
            qtype = "Q8_0"
    elif name.endswith("attn_output.weight"):
        if model.n_expert == 8 and ftype in ("q4_k_s", "q4_k_m"):
            qtype = "Q5_K"
    elif "ffn_down" in name:
        if ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            qtype = "Q6_K"
        elif ftype == "q4_k_s" and i < n // 8:
            qtype = "Q5_K"
    if not _fits(cols, qtype):
        qtype = FALLBACK.get(qtype, qtype)
        if not _fits(cols, qtype):
            qtype = "F16"
    return qtype


def encode_tensor(name: str, array: np.ndarray, dtype: str, quant: str | None = None,
                  model: ModelShape | None = None):
    """(data, GGML type) of the tensor ``name`` as a GGUF file holds it: in ``quant``'s mix
    where that quantizes it, else 1-D in F32 and matrices in ``dtype`` (f32, f16, bf16)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    qtype = tensor_type(name, array.shape, quant, model) if quant else None
    if qtype == "F16":  # a row that is no whole number of any block: llama.cpp writes F16
        return array.astype(np.float16), Q.F16
    if qtype is not None:
        return quantize(array, qtype), Q[qtype]
    # gpt-oss's experts' biases are (E, out); llama.cpp's convolution kernels want F32
    if array.ndim == 1 or name.endswith((".bias", "ssm_conv1d.weight")):
        return array.astype(np.float32), Q.F32
    if dtype == "f16":
        return array.astype(np.float16), Q.F16
    if dtype == "bf16":
        return gguf.quants.quantize(array.astype(np.float32), Q.BF16), Q.BF16
    return array.astype(np.float32), Q.F32

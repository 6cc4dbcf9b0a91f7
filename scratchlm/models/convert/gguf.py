"""GGUF files (llama.cpp): read metadata and tensors, dequantize, map names onto our Llama.

Quantized blocks of 32 weights, as llama.cpp writes them (ggml-quants.c):

    Q8_0: fp16 d, 32 x int8 q                    w = d * q
    Q4_0: fp16 d, 16 bytes of 4-bit q            w = d * (q - 8)
    Q4_1: fp16 d, fp16 m, 16 bytes of 4-bit q    w = d * q + m

In a 4-bit block the low nibbles of the 16 bytes are weights 0-15, the high nibbles 16-31.
llama.cpp's converter also permutes the rows of the Q and K projections (pairs interleaved, for
its RoPE kernel); ``unpermute`` restores Hugging Face's "rotate half" order, which ours uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


class GGUFError(ValueError):
    """A GGUF file or tensor we cannot use; the message names the file and tensor."""


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.uint8).reshape(-1, block_bytes)


def dequantize(raw: np.ndarray, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 array of ``shape`` (rows, cols) from a tensor's stored bytes."""
    if qtype == "F32":
        out = raw.view(np.float32)
    elif qtype == "F16":
        out = raw.view(np.float16).astype(np.float32)
    elif qtype == "BF16":
        out = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif qtype == "Q8_0":
        b = _blocks(raw, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)  # (n, 1)
        q = b[:, 2:].view(np.int8).astype(np.float32)  # (n, 32)
        out = d * q
    elif qtype in ("Q4_0", "Q4_1"):
        head = 2 if qtype == "Q4_0" else 4
        b = _blocks(raw, head + 16)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        packed = b[:, head:]
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)  # (n, 32)
        if qtype == "Q4_0":
            out = d * (q - 8.0)
        else:
            m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
            out = d * q + m
    else:
        raise GGUFError(f"unsupported type {qtype}")
    return out.reshape(shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: (n_head * D, C) rows back to rotate-half order."""
    rows = w.shape[0]
    # llama.cpp: w.reshape(n_head, 2, half, C).swapaxes(1, 2); this is its inverse
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def read_gguf(path: str | Path):
    """(metadata dict, reader) of a GGUF file."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the reader raises several kinds on bad files
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from None
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - fields of types contents() cannot decode
            continue
    return meta, reader


def iter_tensors(path: str | Path, reader) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array in (out, in) layout) for every tensor, dequantized one at a time."""
    for t in reader.tensors:
        qtype = t.tensor_type.name
        if qtype not in SUPPORTED:
            raise GGUFError(f"{path}: tensor {t.name!r} has quantization type {qtype}, which "
                            f"is not supported (supported: {', '.join(SUPPORTED)})")
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists dims inner-first
        yield t.name, dequantize(t.data, qtype, shape)


def config_kwargs(meta: dict) -> dict:
    """LlamaConfig fields from GGUF metadata (architecture "llama")."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"unsupported architecture {arch!r} (only 'llama')")
    a = "llama."
    n_embd = int(meta[a + "embedding_length"])
    n_head = int(meta[a + "attention.head_count"])
    vocab = int(meta.get(a + "vocab_size") or len(meta["tokenizer.ggml.tokens"]))
    kw = dict(
        vocab_size=vocab, context_length=int(meta[a + "context_length"]), n_embd=n_embd,
        n_layer=int(meta[a + "block_count"]), n_head=n_head,
        n_kv_head=int(meta.get(a + "attention.head_count_kv", n_head)),
        intermediate_size=int(meta[a + "feed_forward_length"]),
        rope_base=float(meta.get(a + "rope.freq_base", 10000.0)),
        norm_eps=float(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-5)),
    )
    head_dim = int(meta.get(a + "rope.dimension_count", n_embd // n_head))
    if head_dim != n_embd // n_head:
        kw["head_dim"] = head_dim
    return kw


_BLOCK = {
    "attn_norm.weight": "norm1.weight", "attn_q.weight": "att.q_proj.weight",
    "attn_k.weight": "att.k_proj.weight", "attn_v.weight": "att.v_proj.weight",
    "attn_output.weight": "att.out_proj.weight", "ffn_norm.weight": "norm2.weight",
    "ffn_gate.weight": "ff.fc1.weight", "ffn_up.weight": "ff.fc2.weight",
    "ffn_down.weight": "ff.fc3.weight",
}
_TOP = {"token_embd.weight": "tok_emb.weight", "output_norm.weight": "final_norm.weight",
        "output.weight": "out_head.weight"}


def gguf_key_to_ours(name: str) -> str | None:
    if name in _TOP:
        return _TOP[name]
    if name.startswith("blk."):
        _, layer, rest = name.split(".", 2)
        if rest in _BLOCK:
            return f"trf_blocks.{layer}.{_BLOCK[rest]}"
        if rest == "rope_freqs.weight":  # Llama 3 files carry their scaled frequencies
            return None
    if name == "rope_freqs.weight":
        return None
    raise KeyError(name)

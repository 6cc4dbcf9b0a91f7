"""A GGUF file written again in a llama.cpp file type (``--quant``) straight from its tensors, as
``llama-quantize`` does: no PyTorch model is built, so a downloaded F16 file becomes a Q4_K_M
one in seconds, with the memory of one tensor at a time.

    requantize_gguf("model-f16.gguf", "model-q4_k_m.gguf", "q4_k_m")

The metadata is copied field for field with its types (``general.file_type`` and
``general.quantization_version`` set anew); each tensor is read as float32 (any type our reader
takes) and written as ``export/quant_mix.encode_tensor`` says, the same rule the model exporter
uses, so the two paths write the same tensors.
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.export.atomic import gguf_file
from scratchlm.export.quant_mix import FILE_TYPES, ModelShape, encode_tensor, layer_of
from scratchlm.export.quants import float32_rows

_REWRITTEN = ("general.architecture", "general.file_type", "general.quantization_version",
              "general.alignment", "general.name")


def model_shape(meta: dict, names: set[str]) -> ModelShape:
    """What the mix looks at, from a GGUF file's metadata and tensor names."""
    a = f"{meta.get('general.architecture')}."
    n_layer = int(meta.get(a + "block_count") or 1 + max(map(layer_of, names), default=0))
    heads, kv = meta.get(a + "attention.head_count"), meta.get(a + "attention.head_count_kv")
    heads = heads[0] if isinstance(heads, list) else heads
    kv = kv[0] if isinstance(kv, list) else kv
    with_v = tuple(sorted(layer_of(n) for n in names
                          if n.endswith((".attn_v.weight", ".attn_qkv.weight"))))
    return ModelShape(n_layer=n_layer, n_expert=int(meta.get(a + "expert_count") or 0),
                      tied="output.weight" not in names,
                      is_70b=n_layer == 80 and kv is not None and kv != heads,
                      attn_v_layers=None if len(with_v) == n_layer else with_v)


def requantize_gguf(src: str | Path, dst: str | Path, quant: str, dtype: str = "f16",
                    name: str = "") -> dict:
    """Write ``src``'s model to ``dst`` in the file type ``quant`` (matrices outside its mix in
    ``dtype``, 1-D tensors in F32); returns ``src``'s metadata."""
    import gguf

    from scratchlm.models.convert.gguf import GGUFError, SUPPORTED
    from scratchlm.models.convert.gguf_layout import read_typed_layout

    if quant not in FILE_TYPES:
        raise ValueError(f"quant must be one of {list(FILE_TYPES)}, got {quant!r}")
    meta, types, tensors = read_typed_layout(src)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{src}: metadata field 'general.architecture' is missing")
    shape = model_shape(meta, {t.name for t in tensors})
    dst = Path(dst)
    with gguf_file(dst, arch) as w:
        w.add_name(name or str(meta.get("general.name") or dst.stem))
        w.add_file_type(FILE_TYPES[quant].code)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in meta.items():
            if key in _REWRITTEN:
                continue
            vtype, item = types[key]
            w.add_key_value(key, value, gguf.GGUFValueType(vtype),
                            sub_type=None if item is None else gguf.GGUFValueType(item))
        for t in tensors:
            qtype = t.tensor_type.name
            if qtype not in SUPPORTED:
                raise GGUFError(f"{src}: tensor {t.name!r} has type {qtype}, which we do not "
                                f"read (supported: {', '.join(SUPPORTED)})")
            dims = tuple(int(n) for n in reversed(t.shape.tolist()))
            data, out_type = encode_tensor(t.name, float32_rows(t.data, qtype, dims), dtype,
                                           quant, shape)
            w.add_tensor(t.name, data, raw_dtype=out_type)
    return meta

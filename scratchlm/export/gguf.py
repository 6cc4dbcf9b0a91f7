"""Write a model and its tokenizer as one llama.cpp GGUF file (Ollama, llama.cpp, LM Studio).

    write_gguf(model, tokenizer, "model.gguf", dtype="f16", quant="q8_0")

The family's registry entry names the llama.cpp architecture; its tensor map is the reader's
(``models/convert/gguf.Arch``), run backwards, so what we write is exactly what we read. The
tokenizer goes in as byte-level BPE (``tokenizer.ggml.model = gpt2`` with merges, the
pre-tokenizer's llama.cpp name, control tokens, BOS/EOS and the chat template), or a
SentencePiece vocabulary (Gemma's, Llama 2's) as ``llama`` with its pieces' scores and types.

Tensors: 1-D ones (norms, biases) in F32; matrices in ``dtype`` (F32, F16, BF16) or, with
``quant`` (a llama.cpp file type: q8_0, q4_0, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k), in the
types llama.cpp's quantizer would give each tensor for that file type
(``export/quant_mix.py``; the blocks from ``export/quants.py``). The file is written under its own
temporary name, flushed and renamed (``export/atomic.py``): a crash never leaves a file that
looks complete, two writers to one path end with one whole file, and a full disk is one line
naming the file and its disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from scratchlm.export.atomic import gguf_file
from scratchlm.export.quant_mix import DTYPES, FILE_TYPES, ModelShape, encode_tensor
from scratchlm.export.vocab import ByteBPE, gguf_vocab
from scratchlm.tokenizers.spm_vocab import GGUF_MODEL
from scratchlm.models.convert.gguf import ARCHS, GGUFError, config_metadata
from scratchlm.checkpoints.files import unique_state_dict
from scratchlm.checkpoints.ours import class_head_size
from scratchlm.models.registry import family_of

# llama.cpp's general.file_type (LlamaFileType) for each dtype (for each --quant: FILE_TYPES)
_FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}


def gguf_arch(model: nn.Module) -> str:
    """The llama.cpp architecture a model is written as (the registry's, MoE or dense)."""
    family = family_of(model)
    moe = getattr(model.cfg, "moe", None)
    archs = [a for a in family.gguf_archs
             if a in ARCHS and ARCHS[a].experts in (None, bool(moe and moe.num_experts))]
    if not archs:
        kind = "mixture-of-experts " if moe and moe.num_experts else ""
        raise GGUFError(f"a {kind}{family.name} model has no llama.cpp architecture we write "
                        f"(GGUF export supports: {', '.join(ARCHS)})")
    return archs[0]


def _check_head(model: nn.Module) -> None:
    classes = class_head_size(model)
    if classes is not None:
        raise GGUFError(f"the model's head has {classes} outputs, not one per token (a "
                        "classifier or reward model): GGUF holds language models only")


def _vocab_for(vocab, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and llama.cpp token types (1 normal, 3 control, 5 unused; a SentencePiece
    vocabulary's own types) for ``vocab_size`` rows."""
    if len(vocab.tokens) > vocab_size:
        raise GGUFError(f"the tokenizer has {len(vocab.tokens)} tokens but the model only "
                        f"{vocab_size} embedding rows")
    extra = range(len(vocab.tokens), vocab_size)
    if not isinstance(vocab, ByteBPE):  # SentencePiece: types as the vocabulary gives them
        return ([*vocab.tokens, *(f"<unused{i}>" for i in extra)],
                [*vocab.types, *([5] * len(extra))])
    tokens = list(vocab.tokens) + [f"<|unused_{i}|>" for i in extra]
    types = [1] * vocab_size
    for i in list(vocab.special) + list(extra):
        types[i] = 3
    return tokens, types


def write_gguf(model: nn.Module, tokenizer, path: str | Path, dtype: str = "f32",
               quant: str | None = None, name: str = "") -> Path:
    """Write ``model`` (LoRA merged beforehand) and ``tokenizer`` to the GGUF file ``path``."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if quant is not None and quant not in FILE_TYPES:
        raise ValueError(f"quant must be one of {list(FILE_TYPES)}, got {quant!r}")
    arch = gguf_arch(model)
    _check_head(model)
    cfg = model.cfg
    meta = config_metadata(cfg, arch)
    bpe = gguf_vocab(tokenizer)
    tokens, types = _vocab_for(bpe, cfg.vocab_size)
    state = {k: v.detach().to("cpu", torch.float32).numpy()
             for k, v in unique_state_dict(model).items()}
    if cfg.tie_embeddings and not ARCHS[arch].head_always:
        state.pop("out_head.weight", None)
    elif "out_head.weight" not in state:  # tied, and the architecture wants the head anyway
        state["out_head.weight"] = state["tok_emb.weight"]
    vocab_rows = cfg.vocab_size  # drop vocabulary padding rows
    for key in ("tok_emb.weight", "out_head.weight"):
        if key in state:
            state[key] = state[key][:vocab_rows]

    path = Path(path)
    with gguf_file(path, arch) as w:  # a full disk: one line naming the file; nothing left
        w.add_name(name or path.stem)
        w.add_file_type(FILE_TYPES[quant].code if quant else _FILE_TYPE[dtype])
        if quant:
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_metadata(w, meta)
        _add_vocab(w, bpe, tokens, types)
        _add_tensors(w, arch, state, cfg, dtype, quant)
    return path


def _add_metadata(w, meta: dict) -> None:
    for key, value in meta.items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, list):  # a per-layer array (olmo2's sliding-window pattern)
            w.add_array(key, value)
        else:
            w.add_uint32(key, int(value))


def _add_vocab(w, vocab, tokens: list[str], types: list[int]) -> None:
    if isinstance(vocab, ByteBPE):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab.pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(vocab.merges)
    else:  # SentencePiece (tokenizers/spm_vocab.py): pieces with scores, no merges
        w.add_tokenizer_model(GGUF_MODEL)
        w.add_token_list(tokens)
        w.add_token_scores(vocab.scores + [-1000.0] * (len(tokens) - len(vocab.scores)))
        w.add_token_types(types)
        w.add_add_space_prefix(vocab.add_space_prefix)
        if vocab.unk_id is not None:
            w.add_unk_token_id(vocab.unk_id)
        if vocab.pad_id is not None:
            w.add_pad_token_id(vocab.pad_id)
    if vocab.bos_id is not None:
        w.add_bos_token_id(vocab.bos_id)
    if vocab.eos_id is not None:
        w.add_eos_token_id(vocab.eos_id)
    w.add_add_bos_token(False)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def _add_tensors(w, arch: str, state: dict, cfg, dtype: str, quant: str | None) -> None:
    moe = getattr(cfg, "moe", None)
    gqa = getattr(cfg, "n_kv_head", cfg.n_head) != cfg.n_head
    block = {ours: name for name, ours in ARCHS[arch].block.items()}  # our names -> GGUF's
    with_v = tuple(sorted(int(k.split(".")[1]) for k in state if k.startswith("trf_blocks.")
                          and block.get(k.split(".", 2)[2], "").endswith(
                              ("attn_v.weight", "attn_qkv.weight"))))
    shape = ModelShape(n_layer=cfg.n_layer, n_expert=moe.num_experts if moe else 0,
                       tied="out_head.weight" not in state, is_70b=cfg.n_layer == 80 and gqa,
                       attn_v_layers=None if len(with_v) == cfg.n_layer else with_v)
    try:
        for gguf_name, array in ARCHS[arch].to_gguf(state, cfg):
            data, qtype = encode_tensor(gguf_name, np.ascontiguousarray(array), dtype, quant,
                                        shape)
            w.add_tensor(gguf_name, data, raw_dtype=qtype)
    except KeyError as e:
        raise GGUFError(f"{arch} GGUF has no tensor for our {e.args[0]!r} (LoRA must be merged "
                        "and int8 layers dequantized before export)") from None

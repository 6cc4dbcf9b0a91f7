"""Write a model folder that Hugging Face ``transformers`` (and vLLM, the Hub) load as is:

    config.json, model.safetensors (or shards + model.safetensors.index.json above
    ``max_shard_bytes``), generation_config.json, tokenizer.json, tokenizer_config.json
    (the chat template, BOS/EOS), special_tokens_map.json

``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)``
read it. The tensor layout is the family's HF converter (the registry's), the same map the
loader reads with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from scratchlm.export.vocab import byte_bpe
from scratchlm.models.registry import family_of
from scratchlm.tokenizers import HFTokenizer

DEFAULT_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size ("5GB")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_weights(state: dict[str, torch.Tensor], folder: Path,
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
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
        save_file(shards[0], folder / "model.safetensors", metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(folder / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, "model.safetensors.index.json"]


def hf_tokenizer(tokenizer) -> HFTokenizer:
    """``tokenizer`` as a Hugging Face byte-level BPE (itself when it is one already)."""
    return tokenizer if isinstance(tokenizer, HFTokenizer) else byte_bpe(tokenizer).to_hf()


def write_tokenizer(tokenizer, folder: Path, context_length: int) -> HFTokenizer:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for
    ``AutoTokenizer``: a fast tokenizer that adds no BOS (as ours encodes)."""
    tok = hf_tokenizer(tokenizer)
    tok.tokenizer.save(str(folder / "tokenizer.json"))
    special = {k: v for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token))
               if v}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, **special}
    if tok.eos_token:
        config["pad_token"] = tok.eos_token
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special)
    return tok


def write_hf(model: nn.Module, tokenizer, folder: str | Path, dtype: torch.dtype = torch.float32,
             max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the HF folder for ``model`` (LoRA merged beforehand) into ``folder``."""
    out = getattr(getattr(model, "out_head", None), "out_features", None)
    if out is not None and out not in (model.cfg.vocab_size,
                                       getattr(model.cfg, "padded_vocab_size", out)):
        raise ValueError(f"the model's head has {out} outputs (a classifier or reward model): "
                         "HF's ...ForSequenceClassification heads have no bias, ours do, so "
                         "it is not exported yet; use the scratchlm folder (save_pretrained)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    family = family_of(model)
    conv = family.hf()
    config = conv.config_to_hf(model.cfg)
    state = conv.state_dict_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                  model.cfg)
    state = {k: v.to(dtype) for k, v in state.items()}
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    tok = write_tokenizer(tokenizer, folder, model.cfg.context_length)
    for key in ("bos_token_id", "eos_token_id"):
        value = tok.special_tokens.get(tok.bos_token if key.startswith("bos") else tok.eos_token)
        if value is not None:
            config[key] = value
    write_weights(state, folder, max_shard_bytes)
    _write_json(folder / "config.json", config)
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
    _write_json(folder / "generation_config.json", {**generation, "do_sample": False})
    return folder

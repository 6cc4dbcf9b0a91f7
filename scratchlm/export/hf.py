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
from torch import nn

from scratchlm.export.vocab import byte_bpe
from scratchlm.checkpoints.hf import HF_SHARD_BYTES, save_hf
from scratchlm.checkpoints.ours import class_head_size
from scratchlm.tokenizers import HFTokenizer

def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
             max_shard_bytes: int = HF_SHARD_BYTES) -> Path:
    """Write the HF folder for ``model`` (LoRA merged beforehand) into ``folder``: the
    weights and config through ``save_hf`` (the family's converter), then the tokenizer files
    and generation_config.json."""
    classes = class_head_size(model)
    if classes is not None:
        raise ValueError(f"the model's head has {classes} outputs (a classifier or reward "
                         "model): HF's ...ForSequenceClassification heads have no bias, ours "
                         "do, so it is not exported yet; use the scratchlm folder "
                         "(save_pretrained)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(tokenizer, folder, model.cfg.context_length)
    ids = {key: tok.special_tokens.get(name) for key, name in
           (("bos_token_id", tok.bos_token), ("eos_token_id", tok.eos_token)) if name}
    ids = {k: v for k, v in ids.items() if v is not None}
    save_hf(model, folder, dtype, max_shard_bytes, config=ids)
    _write_json(folder / "generation_config.json", {**ids, "do_sample": False})
    return folder

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
from scratchlm.models.registry import family_of
from scratchlm.tokenizers import HFTokenizer

# transformers' classes for a classifier head over each causal-LM architecture we write:
# (sequences: the last real token's state -> labels; tokens: every token's, and the key of
# that head's weights). Sequence heads have no bias in transformers; token heads may.
HEAD_CLASSES = {  # None: transformers has no such class for the family (refused by name)
    "LlamaForCausalLM": ("LlamaForSequenceClassification", "LlamaForTokenClassification", "score"),
    "Qwen3ForCausalLM": ("Qwen3ForSequenceClassification", "Qwen3ForTokenClassification", "score"),
    "Qwen3MoeForCausalLM": ("Qwen3MoeForSequenceClassification", "Qwen3MoeForTokenClassification",
                            "score"),
    "GPT2LMHeadModel": ("GPT2ForSequenceClassification", "GPT2ForTokenClassification",
                        "classifier"),
    "Gemma3ForCausalLM": ("Gemma3TextForSequenceClassification", None, "score"),
    "Olmo3ForCausalLM": ("Olmo3ForSequenceClassification", None, "score"),
    "GptOssForCausalLM": ("GptOssForSequenceClassification", "GptOssForTokenClassification",
                          "score"),
    "Qwen3_5ForCausalLM": ("Qwen3_5TextForSequenceClassification", None, "score"),
}
HEAD_TASKS = ("sequences", "tokens")

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
             max_shard_bytes: int = HF_SHARD_BYTES, head: str | None = None,
             labels: list[str] | None = None) -> Path:
    """Write the HF folder for ``model`` (LoRA merged beforehand) into ``folder``: the
    weights and config through ``save_hf`` (the family's converter), then the tokenizer files
    and generation_config.json. A classifier or reward head (``head``: one of ``HEAD_TASKS``,
    what the head classifies; ``labels``: its class names) becomes transformers'
    ``...ForSequenceClassification`` / ``...ForTokenClassification``."""
    classes = class_head_size(model)
    if (classes is None) != (head is None):
        raise ValueError(f"the model's head has {classes} outputs (a classifier or reward "
                         "model): say whether it classifies sequences or tokens"
                         if head is None else "head= is for a classifier or reward head; "
                         "this model's head is a language model's")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(tokenizer, folder, model.cfg.context_length)
    ids = {key: tok.special_tokens.get(name) for key, name in
           (("bos_token_id", tok.bos_token), ("eos_token_id", tok.eos_token)) if name}
    ids = {k: v for k, v in ids.items() if v is not None}
    if head is not None:
        _save_classifier(model, folder, dtype, max_shard_bytes, head, labels, ids)
        return folder
    save_hf(model, folder, dtype, max_shard_bytes, config=ids)
    _write_json(folder / "generation_config.json", {**ids, "do_sample": False})
    return folder


def _save_classifier(model: nn.Module, folder: Path, dtype: torch.dtype, max_shard_bytes: int,
                     task: str, labels: list[str] | None, ids: dict) -> None:
    """The base model's weights under the family's HF names, the head under the classifier
    class's (``HEAD_CLASSES``), and a config naming that class, the labels and the padding
    token transformers pools sequences by (the last token that is not padding)."""
    if task not in HEAD_TASKS:
        raise ValueError(f"head must be one of {HEAD_TASKS}, got {task!r}")
    causal = family_of(model).hf().config_to_hf(model.cfg)["architectures"][0]
    if causal not in HEAD_CLASSES:
        raise ValueError(f"a classifier head on {causal} is not exported (transformers classes "
                         f"written: {', '.join(HEAD_CLASSES)})")
    sequence_class, token_class, token_key = HEAD_CLASSES[causal]
    if (sequence_class if task == "sequences" else token_class) is None:
        raise ValueError(f"transformers has no {'sequence' if task == 'sequences' else 'token'} "
                         f"classifier for {causal}'s family: a {task} head on it is not exported")
    head = model.out_head
    classes = head.out_features
    if task == "sequences" and head.bias is not None:
        raise ValueError("transformers' ...ForSequenceClassification head has no bias and this "
                         "one has: train the classifier with --head_bias false to export it")
    key = "score" if task == "sequences" else token_key
    state = {f"{key}.weight": head.weight.detach().cpu()}
    if head.bias is not None:
        state[f"{key}.bias"] = head.bias.detach().cpu()
    names = labels or [f"LABEL_{i}" for i in range(classes)]
    if len(names) != classes:
        raise ValueError(f"{len(names)} labels for a head of {classes} outputs")
    hf_config = {
        "architectures": [sequence_class if task == "sequences" else token_class],
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)}, "tie_word_embeddings": False,
        "pad_token_id": ids.get("eos_token_id"), "classifier_dropout": 0.0, **ids}
    if task == "tokens" and token_key == "score":
        hf_config["token_classification_bias"] = head.bias is not None
    elif task == "tokens" and head.bias is None:
        state[f"{key}.bias"] = torch.zeros(classes)  # GPT-2's token head always has a bias
    save_hf(model, folder, dtype, max_shard_bytes, config=hf_config, head=state)

"""What finetuning recipes start from and end with: the model, tokenizer and instruction-data
splits (``load_for_finetuning``), LoRA from its config (``apply_lora_config``), and the final
folders (``save_final``: the adapter and/or the merged model with its tokenizer)."""

from __future__ import annotations

from pathlib import Path

from scratchlm.data.instruction import read_examples, split_examples
from scratchlm.data.sources import SOURCES, fetch
from scratchlm.finetune.lora import LoraConfig, apply_lora, merge_lora, save_adapter
from scratchlm.models.loading import load_model_and_tokenizer, save_pretrained
from scratchlm.tokenizers import save_tokenizer


def load_examples(data: str):
    return read_examples(fetch(data) if data in SOURCES else data)


def resolve_style(style: str, tokenizer) -> str:
    if style == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    return style


def load_for_finetuning(model_name: str, data: str, style: str, limit: int | None,
                        split_seed: int | None, device):
    """What the instruct and DPO recipes start from: (model, tokenizer, resolved style,
    (train, val, test) examples, pad id)."""
    model, tok = load_model_and_tokenizer(model_name, device=device)
    examples = load_examples(data)[:limit]
    train_ex, val_ex, test_ex = split_examples(examples, seed=split_seed)
    if not train_ex or not test_ex:
        raise ValueError(f"{data}: {len(examples)} examples are too few to split 85/10/5")
    pad = tok.eos_id if tok.eos_id is not None else 0
    return model, tok, resolve_style(style, tok), (train_ex, val_ex, test_ex), pad


def apply_lora_config(model, cfg: LoraConfig) -> None:
    apply_lora(model, cfg.rank, cfg.alpha, tuple(cfg.targets), cfg.dropout, cfg.scaling,
               quantize_base=cfg.quantize_base)


def save_final(model, tokenizer, final: Path, lora: LoraConfig) -> None:
    """``final/adapter/`` (with LoRA) and ``final/`` (the model, LoRA merged, with its
    tokenizer); a 4-bit (QLoRA) base keeps only the adapter."""
    if lora.rank > 0:
        save_adapter(model, final / "adapter", lora)
    if lora.rank == 0 or lora.quantize_base is None:
        save_merged(model, tokenizer, final)


def save_merged(model, tokenizer, final: Path) -> None:
    """``final/``: the model with any LoRA adapters merged, and its tokenizer."""
    merge_lora(model)
    save_pretrained(model, final)
    save_tokenizer(tokenizer, final)

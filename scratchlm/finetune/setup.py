"""What finetuning recipes start from and end with: the model, tokenizer and instruction-data
splits (``load_for_finetuning``), LoRA from its config (``apply_lora_config``), and the final
folders (``save_final``: what was trained over the base, or the merged model, with its tokenizer)."""

from __future__ import annotations

from pathlib import Path

from scratchlm.data.instruction import read_examples, split_examples
from scratchlm.downloads.sources import SOURCES, fetch
from scratchlm.finetune.lora import LoraConfig, apply_lora, merge_lora, save_adapter
from scratchlm.checkpoints.delta import save_delta
from scratchlm.checkpoints.load import load_model_and_tokenizer, load_pretrained
from scratchlm.checkpoints.ours import save_pretrained
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


def save_final(model, tokenizer, final: Path, lora: LoraConfig, base: str) -> Path:
    """A run's ``final/``, with its tokenizer. With a frozen base (LoRA, a head, the last
    blocks) it holds what was trained over ``base`` (``checkpoints/delta.py``): ``adapter/`` and
    ``trained.safetensors``, which ``load_pretrained`` folds into the base. ``lora.save_merged``
    (and a model trained whole) writes the whole model instead, LoRA merged."""
    if lora.rank > 0:
        save_adapter(model, final / "adapter", lora)
    frozen = any(not p.requires_grad for p in model.parameters())
    four_bit = lora.rank > 0 and lora.quantize_base is not None
    if not frozen or (lora.save_merged and not four_bit):
        save_pretrained(merge_lora(model), final)
    else:
        save_delta(model, final, base)
        if lora.save_merged:  # a 4-bit base: the delta merged into the full-precision base
            save_pretrained(load_pretrained(str(final)), final)
    save_tokenizer(tokenizer, final)
    return final


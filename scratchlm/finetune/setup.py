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


def load_splits(data: str | list[str], limit: int | None, split_seed: int | None):
    """(train, val, test) examples of one data set, or of several (``a.jsonl:2 b.parquet``):
    each set is split on its own (the first ``limit`` of each), and its training part counts
    ``weight`` times (2: twice an epoch; 0.5: a seeded half; no weight: once)."""
    from scratchlm.data.documents import split_weight
    from scratchlm.data.mixtures import expand_mixtures
    from scratchlm.data.instruction import weighted

    train, val, test = [], [], []
    for i, spec in enumerate(expand_mixtures([data] if isinstance(data, str) else data)):
        name, weight = split_weight(spec)
        examples = load_examples(name)[:limit]
        train_ex, val_ex, test_ex = split_examples(examples, seed=split_seed)
        if not train_ex or not test_ex:
            raise ValueError(f"{name}: {len(examples)} examples are too few to split 85/10/5")
        train += weighted(train_ex, 1.0 if weight is None else weight, seed=i)
        val += val_ex
        test += test_ex
    return train, val, test


def load_for_finetuning(model_name: str, data: str | list[str], style: str, limit: int | None,
                        split_seed: int | None, device):
    """What the instruct and DPO recipes start from: (model, tokenizer, resolved style,
    (train, val, test) examples, pad id)."""
    model, tok = load_model_and_tokenizer(model_name, device=device)
    splits = load_splits(data, limit, split_seed)
    pad = tok.eos_id if tok.eos_id is not None else 0
    return model, tok, resolve_style(style, tok), splits, pad


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


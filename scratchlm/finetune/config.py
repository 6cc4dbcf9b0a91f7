"""``LoraConfig``: the LoRA settings recipes nest as ``lora`` (``--lora.rank``). No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraConfig:
    rank: int = 0  # 0: no LoRA (finetune the layers named by `trainable`)
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["all"])  # q k v out ff head, or all
    dropout: float = 0.0
    scaling: str = "book"  # book: alpha; peft: alpha / rank
    quantize_base: str | None = None  # "nf4": QLoRA, the adapted base weights in 4-bit NF4; "nf4-dq": double quantization

"""Save LoRA adapters of a Llama-layout model (Llama, Qwen3, Qwen3.5, Gemma 3, OLMo 3,
gpt-oss) as a PEFT adapter folder (``adapter_model.safetensors`` +
``adapter_config.json``) that ``peft.PeftModel.from_pretrained`` loads onto the Hugging Face
model of the same weights, and load such a folder back onto our model."""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from scratchlm.checkpoints.files import read_json
from scratchlm.finetune.lora import lora_modules
from scratchlm.models.registry import family_of


def _hf_module_name(model: nn.Module, ours: str) -> str:
    """``trf_blocks.3.att.q_proj`` -> ``model.layers.3.self_attn.q_proj``, through the key map
    of the model's family."""
    conv = family_of(model).hf()
    inv_block = {v.removesuffix(".weight"): k.removesuffix(".weight")
                 for k, v in conv._BLOCK.items() if isinstance(v, str) and v.endswith(".weight")}
    inv_top = {v.removesuffix(".weight"): k.removesuffix(".weight") for k, v in conv._TOP.items()}
    if ours in inv_top:
        return inv_top[ours]
    _, layer, rest = ours.split(".", 2)
    if rest not in inv_block:  # e.g. gpt-oss's experts: stacked parameters in transformers
        raise ValueError(f"{ours} has no module of its own in the Hugging Face model, so a "
                         f"LoRA adapter on it cannot be saved in PEFT's format (adapt the "
                         f"attention projections only, or save our own adapter format)")
    return f"model.layers.{layer}.{inv_block[rest]}"


def save_peft_adapter(model: nn.Module, folder: str | Path, base_model: str = "") -> Path:
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters")
    first = next(iter(mods.values()))
    if any(list(m.parts) != ["all"] for m in mods.values()):
        raise ValueError("PEFT export needs one adapter per projection (a Llama model)")
    state, targets = {}, set()
    for name, m in mods.items():
        hf = _hf_module_name(model, name)
        targets.add(hf.rsplit(".", 1)[-1])
        state[f"base_model.model.{hf}.lora_A.weight"] = m.lora_A["all"].weight.detach().contiguous()
        state[f"base_model.model.{hf}.lora_B.weight"] = m.lora_B["all"].weight.detach().contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": first.rank, "lora_alpha": first.scale * first.rank,  # PEFT scales by alpha / r
        "lora_dropout": first.dropout.p, "target_modules": sorted(targets), "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


PEFT_TARGETS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "out", "gate_proj": "ff",
                "up_proj": "ff", "down_proj": "ff", "lm_head": "head",
                # Qwen3.5's linear-attention layers: output, and inputs
                "out_proj": "out", "in_proj_qkv": "lin", "in_proj_z": "lin", "in_proj_a": "lin",
                "in_proj_b": "lin"}


def read_peft_config(path: Path) -> dict:
    """``adapter_config.json`` with the fields we use checked, the file and field named: a NaN
    ``lora_alpha`` would merge silently into a model that prints only "!"."""
    cfg = read_json(path)  # a damaged file: a CheckpointError (a ValueError) naming it
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path.parent}: not a LoRA adapter ({cfg.get('peft_type')!r})")
    r, alpha, targets = cfg.get("r"), cfg.get("lora_alpha"), cfg.get("target_modules")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{path}: 'r' must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"{path}: 'lora_alpha' must be a finite number, got {alpha!r}")
    if (not isinstance(targets, list) or not targets
            or not all(isinstance(t, str) and t in PEFT_TARGETS for t in targets)):
        raise ValueError(f"{path}: 'target_modules' must be a list of {', '.join(PEFT_TARGETS)}, "
                         f"got {targets!r}")
    return cfg


def load_peft_adapter(model: nn.Module, folder: str | Path, scaling: str = "peft") -> nn.Module:
    """Apply a PEFT LoRA folder to our Llama model (wrapping the targeted projections)."""
    from scratchlm.finetune.lora import apply_lora

    folder = Path(folder)
    cfg = read_peft_config(folder / "adapter_config.json")
    targets = sorted({PEFT_TARGETS[t] for t in cfg["target_modules"]})
    alpha = cfg["lora_alpha"] if scaling == "peft" else cfg["lora_alpha"] / cfg["r"]
    apply_lora(model, cfg["r"], alpha, targets, scaling=scaling)
    weights = load_file(folder / "adapter_model.safetensors")
    for name, m in lora_modules(model).items():
        hf = _hf_module_name(model, name)
        m.lora_A["all"].weight.data.copy_(weights[f"base_model.model.{hf}.lora_A.weight"])
        m.lora_B["all"].weight.data.copy_(weights[f"base_model.model.{hf}.lora_B.weight"])
    return model

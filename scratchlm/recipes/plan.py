"""``scratchlm plan``: what a run will need before it starts (see ``training/planner.py``).

    scratchlm plan --model gpt2-124m --tokens 2.5e9 --method full --batch 8 --context 1024 \\
        --dtype bf16 --peak-tflops 989 --mfu 0.4 --gpu-memory 80
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.config import load_file
from scratchlm.checkpoints.names import LOCAL_GGUF
from scratchlm.models.registry import (family_for_hf, family_named, family_of_config, preset,
                                       preset_names)
from scratchlm.recipes.configs import PlanConfig
from scratchlm.training.planner import Plan, format_plan, plan


def resolve_config(name: str):
    """A preset of any family, a model folder (ours or a Hugging Face one), a run's
    config.json (its ``model_config``), or a JSON/YAML file of config fields (with a
    ``family`` key, or GPT/Llama told apart by ``intermediate_size``)."""
    if name in preset_names():
        return preset(name)[1]
    if name in LOCAL_GGUF or name.endswith(".gguf"):  # a model with weights: its file's shape
        from scratchlm.models.convert.gguf import config_kwargs, read_gguf
        from scratchlm.models.registry import family_for_gguf

        meta, _ = read_gguf(LOCAL_GGUF[name]() if name in LOCAL_GGUF else name)
        family = family_for_gguf(meta.get("general.architecture"), name)
        return family.config_cls(**config_kwargs(meta, name))
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unknown model {name!r}: a preset "
                         f"({', '.join([*preset_names(), *LOCAL_GGUF])}), a .gguf file, a model "
                         "folder or a config file")
    data = load_file(path)
    if "scratchlm" in data:  # a model folder of ours
        meta = data["scratchlm"]
        return family_named(meta["family"]).config(meta["config"])
    if "model_type" in data:  # a Hugging Face folder
        return family_for_hf(data["model_type"], str(path)).hf().config_from_hf(data)
    family = data.get("model_family")  # a pretraining run's config.json
    data = dict(data.get("model_config", data))
    family = data.pop("family", family)
    return (family_named(family) if family else family_of_config(data)).config(data)


def main(cfg: PlanConfig) -> Plan:
    p = plan(resolve_config(cfg.model), method=cfg.method, batch=cfg.batch,
             context=cfg.context, dtype=cfg.dtype, optimizer=cfg.optimizer,
             lora_rank=cfg.lora.rank, lora_targets=tuple(cfg.lora.targets),
             tokens=int(cfg.tokens), peak_tflops=cfg.peak_tflops, mfu=cfg.mfu,
             gpu_memory_gib=cfg.gpu_memory, grad_checkpointing=cfg.grad_checkpointing)
    print(json.dumps(p.to_dict(), indent=2) if cfg.json else format_plan(p, cfg.model, cfg.method))
    return p

"""``scratchlm plan``: what a run will need before it starts (see ``training/planner.py``).

    scratchlm plan --model gpt2-124m --tokens 2.5e9 --method full --batch 8 --context 1024 \\
        --dtype bf16 --peak-tflops 989 --mfu 0.4 --gpu-memory 80
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.config import load_file
from scratchlm.models.gpt import GPT_PRESETS, GPTConfig
from scratchlm.models.llama import LLAMA_PRESETS, LlamaConfig
from scratchlm.models.loading import FAMILIES
from scratchlm.training.planner import Plan, format_plan, plan


def resolve_config(name: str):
    """A GPT or Llama preset, a model folder (``save_pretrained``'s config.json), a run's
    config.json (its ``model_config``), or a JSON/YAML file of config fields."""
    if name in GPT_PRESETS:
        return GPTConfig.from_name(name)
    if name in LLAMA_PRESETS:
        return LlamaConfig.from_name(name)
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unknown model {name!r}: a preset ({', '.join([*GPT_PRESETS, *LLAMA_PRESETS])}) "
                         "or a config file")
    data = load_file(path)
    if "scratchlm" in data:  # a model folder of ours
        meta = data["scratchlm"]
        return FAMILIES[meta["family"]][0](**meta["config"])
    data = data.get("model_config", data)
    return LlamaConfig(**data) if "intermediate_size" in data else GPTConfig(**data)


def main(model: str, as_json: bool = False, **kwargs) -> Plan:
    p = plan(resolve_config(model), **kwargs)
    print(json.dumps(p.to_dict(), indent=2) if as_json
          else format_plan(p, model, kwargs.get("method", "full")))
    return p

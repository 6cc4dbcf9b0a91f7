"""The recipes, in one table the CLI and ``scratchlm tune`` share: each one's command, module,
config dataclass and help line. Importing this module imports nothing else (so ``scratchlm
--help`` starts no torch); a recipe's config class comes from the torch-free
``recipes/configs.py``, and ``Recipe.load()`` imports the recipe when it runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    command: str  # as typed after ``scratchlm``, e.g. "finetune instruct"
    module: str
    config: str  # the config dataclass in ``module``; its fields are the command's flags
    help: str
    tunable: bool = False  # reports a validation loss each evaluation (scratchlm tune)

    @property
    def name(self) -> str:
        """The short name (``tune --recipe NAME``): the last word of the command."""
        return self.command.split()[-1]

    def config_class(self) -> type:
        """The config dataclass, from ``recipes/configs.py`` (no torch import)."""
        return getattr(importlib.import_module("scratchlm.recipes.configs"), self.config)

    def load(self):
        """(config class, main function): imports the recipe itself."""
        return self.config_class(), importlib.import_module(self.module).main


RECIPES: dict[str, Recipe] = {r.command: r for r in (
    Recipe("pretrain", "scratchlm.recipes.pretrain", "PretrainConfig",
           "train a model from scratch (any family's preset)", tunable=True),
    Recipe("finetune classify", "scratchlm.recipes.finetune_classifier", "ClassifyConfig",
           "a text classifier (last block(s) or LoRA)", tunable=True),
    Recipe("finetune instruct", "scratchlm.recipes.finetune_instruct", "InstructConfig",
           "instruction finetuning (full or LoRA)", tunable=True),
    Recipe("finetune dpo", "scratchlm.recipes.finetune_dpo", "DPOConfig",
           "preference tuning with DPO (full or LoRA)"),
    Recipe("finetune grpo", "scratchlm.recipes.finetune_grpo", "GRPOConfig",
           "reinforcement learning with GRPO on checked answers or a reward model"),
    Recipe("finetune reward", "scratchlm.recipes.finetune_reward", "RewardConfig",
           "a reward model from preference pairs (Bradley-Terry)"),
    Recipe("finetune tokens", "scratchlm.recipes.finetune_tokens", "TaggingConfig",
           "a token tagger (named entities) from CoNLL data"),
    Recipe("finetune prompt", "scratchlm.recipes.finetune_prompt", "PromptConfig",
           "prompt tuning: a trained soft prompt, model frozen"),
    Recipe("distill", "scratchlm.recipes.distill", "DistillConfig",
           "train a smaller student from a teacher model", tunable=True),
    Recipe("export", "scratchlm.recipes.export", "ExportConfig",
           "write a model as GGUF (llama.cpp, Ollama) or a Hugging Face folder"),
)}


def tunable() -> dict[str, Recipe]:
    """Short name -> recipe, for the recipes ``scratchlm tune`` can search over."""
    return {r.name: r for r in RECIPES.values() if r.tunable}

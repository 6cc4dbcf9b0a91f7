"""Every command, in the one table the CLI and ``scratchlm tune`` share: each one's words,
module and function, config dataclass, help line and positional arguments. Importing this
module imports nothing else (so ``scratchlm --help`` starts no torch); a command's config class
comes from the torch-free ``recipes/configs.py``, and ``Recipe.load()`` imports the command's
module when it runs. A function that returns False fails the command (exit status 1)."""

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
    function: str = "main"  # in ``module``, called with the config
    # config fields given as positional arguments: (field, nargs, help)
    positional: tuple[tuple[str, str, str], ...] = ()

    @property
    def name(self) -> str:
        """The short name (``tune --recipe NAME``): the last word of the command."""
        return self.command.split()[-1]

    def config_class(self) -> type:
        """The config dataclass, from ``recipes/configs.py`` (no torch import)."""
        return getattr(importlib.import_module("scratchlm.recipes.configs"), self.config)

    def load(self):
        """(config class, its function): imports the command's module."""
        return self.config_class(), getattr(importlib.import_module(self.module), self.function)


# The words that group commands (``scratchlm finetune instruct``), with their help lines.
GROUPS = {"finetune": "finetune a pretrained model", "evaluate": "evaluate models and outputs"}


RECIPES: dict[str, Recipe] = {r.command: r for r in (
    Recipe("demo", "scratchlm.demo", "DemoConfig",
           "run the whole lifecycle on embedded defaults"),
    Recipe("prepare", "scratchlm.recipes.prepare", "PrepareConfig",
           "tokenize text files into memory-mapped token shards"),
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
    Recipe("evaluate judge", "scratchlm.recipes.judge", "JudgeConfig",
           "score responses 0-100 with a judge model over HTTP", function="command",
           positional=(("responses", "?", "a test-with-responses.json (instruction/prompt, "
                        "reference or output, model_response)"),)),
    Recipe("evaluate run", "scratchlm.recipes.evaluate", "EvaluateConfig",
           "benchmarks: bits-per-byte, multiple choice by log-likelihood, GSM8K"),
    Recipe("evaluate compare", "scratchlm.recipes.evaluate", "CompareConfig",
           "two evaluations side by side with deltas", function="compare",
           positional=(("runs", "*", "two results folders (RUN/eval)"),)),
    Recipe("generate", "scratchlm.recipes.generate", "GenerateConfig",
           "continue a prompt with a model"),
    Recipe("chat", "scratchlm.recipes.chat", "ChatConfig",
           "chat with a model in the terminal (streaming)"),
    Recipe("serve", "scratchlm.serve.app", "ServeConfig",
           "an OpenAI-compatible HTTP server with a web chat page"),
    Recipe("tune", "scratchlm.recipes.tune", "TuneConfig",
           "hyperparameter search over a recipe (Optuna, resumable)", function="command"),
    Recipe("plan", "scratchlm.recipes.plan", "PlanConfig",
           "memory, FLOPs, time and Chinchilla tokens of a run"),
    Recipe("train-tokenizer", "scratchlm.recipes.train_tokenizer", "TrainTokenizerConfig",
           "train a byte-level BPE tokenizer from scratch"),
    Recipe("speedrun", "scratchlm.speedrun.run", "SpeedrunConfig",
           "your own chat model from scratch: tokenizer, pretraining, SFT, evaluation, report"),
)}


def tunable() -> dict[str, Recipe]:
    """Short name -> recipe, for the recipes ``scratchlm tune`` can search over."""
    return {r.name: r for r in RECIPES.values() if r.tunable}

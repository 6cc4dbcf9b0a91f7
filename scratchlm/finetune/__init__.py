"""Finetuning methods as wrappers plus surgery functions (LoRA, ...)."""

"""Evaluation of models: perplexity and bits per byte, multiple choice and GSM8K by the
engine, report cards and their resumable caches, lm-evaluation-harness, LLM judges over HTTP."""

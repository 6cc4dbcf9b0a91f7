"""Evaluation of finished models: an LLM judge over HTTP and offline metrics."""

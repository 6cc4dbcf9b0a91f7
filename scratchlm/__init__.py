"""scratchlm: build large language models from scratch and take them through their whole life."""

__version__ = "0.1.0"

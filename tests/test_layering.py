"""Dependencies point one way (STYLE.md):
nn -> models -> (tokenizers, data) -> (finetune, export) -> training -> (generation, evaluate)
-> recipes -> cli/serve.
A module may import from its own layer or lower ones, never from a higher one, and importing
the package does no work (no torch import from ``import scratchlm``).

``models/loading.py`` reads checkpoints that it may first download (``models/hub.py``), so
both sit with ``data`` (layer 2), as do ``models/delta.py``, which loads a finetuned model's base through it,
``models/generation_config.py`` and ``models/gguf_tokenizer.py`` (which builds a tokenizer);
``models/__init__`` may re-export it lazily (a package's own submodule).
``recipes/demo.py`` runs every stage of the lifecycle, the server included, so it sits with
cli/serve/api (layer 7)."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

LAYERS = {
    "models.loading": 2, "models.hub": 2, "models.delta": 2, "models.generation_config": 2,
    "models.gguf_tokenizer": 2, "recipes.demo": 7,
    "nn": 0, "models": 1, "tokenizers": 2, "data": 2, "finetune": 3, "export": 3,
    "training": 4,
    "evaluate": 5, "generation": 5, "recipes": 6, "cli": 7, "serve": 7, "api": 7, "__main__": 8,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "scratchlm" or len(parts) < 2:
        return None
    if ".".join(parts[1:3]) in LAYERS:
        return LAYERS[".".join(parts[1:3])]
    return LAYERS.get(parts[1])


def test_imports_point_down():
    bad = []
    for path in (ROOT / "scratchlm").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        mod = ".".join(rel.parts)
        own = _layer(mod)
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                dep = _layer(name)
                if path.name == "__init__.py" and name.startswith(mod.removesuffix(".__init__")):
                    continue  # a package re-exporting its own submodule
                if dep is not None and dep > own:
                    bad.append(f"{mod} imports {name}")
    assert not bad, "\n".join(bad)


def test_import_does_no_work():
    code = "import sys, scratchlm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_recipes_do_not_import_each_other():
    """A recipe composes library pieces; what two recipes share lives in a lower layer
    (``finetune/setup.py``, ``training/``, ``generation/responses.py``, ``data/``). The demo,
    which runs every recipe in turn, is the one exception; the tables every recipe reads
    (``recipes/configs.py``, the config dataclasses; ``recipes/registry.py``) are no recipes."""
    tables = ("scratchlm.recipes.configs", "scratchlm.recipes.registry")
    bad = []
    for path in (ROOT / "scratchlm" / "recipes").glob("*.py"):
        if path.stem in ("demo", "__init__", "configs", "registry"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "scratchlm.recipes") and node.module not in tables:
                bad.append(f"recipes/{path.name} imports {node.module}")
            elif isinstance(node, ast.Import):
                bad += [f"recipes/{path.name} imports {a.name}" for a in node.names
                        if a.name.startswith("scratchlm.recipes")]
    assert not bad, "\n".join(bad)

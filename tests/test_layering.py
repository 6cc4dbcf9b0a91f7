"""Dependencies point one way (STYLE.md, docs/architecture.md):
(config, nn) -> models -> (downloads, tokenizers, data, checkpoints) -> (finetune, export) -> training
-> (generation, evaluate) -> rl -> recipes -> (demo, speedrun, cli, serve, api) -> __main__.
A module may import from its own layer or lower ones, never from a higher one; packages on one
layer never import each other both ways (no circle); and importing the package does no work (no
torch import from ``import scratchlm``). Each package has one layer: no file is placed apart.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

LAYERS = {
    "config": 0, "nn": 0, "models": 1, "downloads": 2, "tokenizers": 2, "data": 2, "checkpoints": 2,
    "finetune": 3, "export": 3, "training": 4, "evaluate": 5, "generation": 5, "rl": 6,
    "recipes": 7, "demo": 8, "speedrun": 8, "cli": 8, "serve": 8, "api": 8, "__main__": 9,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "scratchlm" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def _imports(path):
    """The scratchlm modules a file imports (at the top or inside functions)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_every_package_has_a_layer():
    packages = {p.name for p in (ROOT / "scratchlm").iterdir()
                if p.is_dir() and any(p.glob("*.py"))}
    modules = {p.stem for p in (ROOT / "scratchlm").glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(LAYERS)


def test_packages_of_one_layer_do_not_import_each_other_both_ways():
    edges = set()
    for path in (ROOT / "scratchlm").rglob("*.py"):
        own = path.relative_to(ROOT / "scratchlm").parts[0].removesuffix(".py")
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "scratchlm" and len(parts) > 1 and parts[1] != own:
                edges.add((own, parts[1]))
    circles = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
    assert not circles, "\n".join(circles)


def test_imports_point_down():
    bad = []
    for path in (ROOT / "scratchlm").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        mod = ".".join(rel.parts)
        own = _layer(mod)
        if own is None:
            continue
        for name in _imports(path):
            dep = _layer(name)
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
    which runs every recipe in turn, sits above them (``scratchlm/demo.py``), as the speedrun
    does (``scratchlm/speedrun/``); the tables every recipe reads (``recipes/configs.py``, the
    config dataclasses, with the speedrun's in ``recipes/speedrun_config.py``;
    ``recipes/registry.py``) are no recipes."""
    tables = ("scratchlm.recipes.configs", "scratchlm.recipes.registry",
              "scratchlm.recipes.speedrun_config")
    bad = []
    for path in (ROOT / "scratchlm" / "recipes").glob("*.py"):
        if path.stem in ("__init__", "configs", "registry", "speedrun_config"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "scratchlm.recipes") and node.module not in tables:
                bad.append(f"recipes/{path.name} imports {node.module}")
            elif isinstance(node, ast.Import):
                bad += [f"recipes/{path.name} imports {a.name}" for a in node.names
                        if a.name.startswith("scratchlm.recipes")]
    assert not bad, "\n".join(bad)

"""Training checkpoints that survive crashes, and exact resume.

A checkpoint is a folder ``checkpoints/step-000123/`` holding

    model.safetensors     weights (safetensors: never unpickled)
    optimizer.pt          optimizer state (tensors and numbers only; loaded weights_only=True)
    rng.pt                torch (and CUDA) RNG states
    trainer_state.json    step, tokens seen, epoch and batch position of the data
    config.json           the fully resolved run config

It is written into ``step-000123.tmp/`` and renamed when complete, so a crash (even SIGKILL)
mid-save leaves the previous checkpoints intact; leftover ``.tmp`` folders are ignored and
removed. Only the newest ``keep_last`` checkpoints are kept.

FSDP runs save sharded files with ``torch.distributed.checkpoint`` instead of model.safetensors
and optimizer.pt (``sharded/``); those load on any number of processes, including one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scratchlm.models.loading import unique_state_dict

_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict, config: dict,
                    keep_last: int = 3, sharded: bool = False, is_main: bool = True) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f"step-{step:06d}.tmp"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if sharded:
        import torch.distributed as dist

        dist.barrier()  # the folder exists before any rank writes its shard
        _save_sharded(tmp, model, optimizer)
    if is_main:
        if not sharded:
            save_file(unique_state_dict(model), tmp / "model.safetensors", metadata={"format": "pt"})
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # the checkpoint appears whole or not at all
        _prune(ckpt_root, keep_last)
    return final


def _fsync_dir(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _prune(ckpt_root: Path, keep_last: int) -> None:
    for leftover in ckpt_root.glob("step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    done = list_checkpoints(ckpt_root.parent)
    for old in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name))
             and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict:
    """Load weights (and optimizer, RNG) in place; returns the trainer state."""
    path = Path(path)
    if (path / "sharded").is_dir():
        _load_sharded(path, model, optimizer)
    else:
        weights = load_file(path / "model.safetensors")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied_ok = {"out_head.weight"} if getattr(getattr(model, "cfg", None), "tie_embeddings", False) else set()
        if unexpected or set(missing) - tied_ok:
            raise ValueError(f"{path}: checkpoint does not fit the model "
                             f"(missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})")
        if optimizer is not None and (path / "optimizer.pt").is_file():
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    if restore_rng:
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())


def _save_sharded(folder: Path, model: nn.Module, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer if optimizer is not None else [])
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "sharded"))


def _load_sharded(folder: Path, model: nn.Module, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer if optimizer is not None else [])
    state = {"model": model_sd}
    if optimizer is not None:
        state["optim"] = optim_sd
    dcp.load(state, checkpoint_id=str(folder / "sharded"))
    set_state_dict(model, optimizer if optimizer is not None else [],
                   model_state_dict=state["model"], optim_state_dict=state.get("optim", {}))

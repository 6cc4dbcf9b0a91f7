"""Training checkpoints that survive crashes, and exact resume.

A checkpoint is a folder ``checkpoints/step-000123/`` holding

    model.safetensors     weights (safetensors: never unpickled); with a frozen base (LoRA,
                          a head-only finetune) only the trained parameters, as the base is
                          read again from its own files when the run resumes
    optimizer.pt          optimizer state (tensors and numbers only; loaded weights_only=True)
    rng.pt                torch (and CUDA) RNG states
    trainer_state.json    step, tokens seen, epoch and batch position of the data
    loss_state.json       only for a loss module with state between steps (GRPO's rollout
                          while it is trained on for several steps), one entry per rank
    config.json           the fully resolved run config
    manifest.json         sha256 of each file above, checked when the checkpoint is loaded

It is written into ``step-000123.tmp/`` and renamed when complete, so a crash (even SIGKILL)
mid-save leaves the previous checkpoints intact; leftover ``.tmp`` folders are ignored and
removed. Only the newest ``keep_last`` checkpoints are kept.

Loading trusts nothing: a file whose digest differs from the manifest, a missing optimizer or
RNG state, a truncated safetensors file or a damaged ``trainer_state.json`` is a
``CheckpointLoadError`` naming the file, never a silent inexact resume.

FSDP runs save sharded files with ``torch.distributed.checkpoint`` instead of model.safetensors
and optimizer.pt (``sharded/``); those load on any number of processes, including one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scratchlm.downloads.download import sha256_file
from scratchlm.checkpoints.files import unique_state_dict

_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointLoadError(ValueError):
    """A checkpoint that cannot be trusted or used; the message names the file."""


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict, config: dict,
                    keep_last: int = 3, sharded: bool = False, is_main: bool = True,
                    texts: dict[str, str] | None = None) -> Path:
    """``texts``: more files (name -> text) written into the checkpoint and its manifest."""
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
            weights, meta = trained_state(model)
            save_file(weights, tmp / "model.safetensors", metadata=meta)
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text)
        files = sorted(f for f in tmp.iterdir() if f.is_file())
        (tmp / "manifest.json").write_text(json.dumps(
            {"sha256": {f.name: sha256_file(f) for f in files}}, indent=2))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # the checkpoint appears whole or not at all
        _prune(ckpt_root, keep_last)
    return final


def trained_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What a checkpoint stores: every tensor, or, when some parameters are frozen, only the
    trainable ones (metadata ``trained_only``). A frozen LoRA base would otherwise be copied
    into every checkpoint: 540 MB of SmolLM2 for a 23 MB adapter."""
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return unique_state_dict(model), {"format": "pt"}
    state = {k: v.detach().contiguous().cpu() for k, v in params.items() if v.requires_grad}
    return state, {"format": "pt", "trained_only": "true"}


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


def read_json(path: Path, kind: str = "object") -> dict:
    """A JSON object from ``path``; anything else is a CheckpointLoadError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointLoadError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointLoadError(f"{path}: expected a JSON {kind}, found "
                                  f"{type(value).__name__}")
    return value


def verify_checkpoint(path: str | Path) -> None:
    """Check every file the manifest lists against its sha256 (checkpoints written before
    manifests existed have none and pass)."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        return
    digests = read_json(path / "manifest.json").get("sha256")
    if not isinstance(digests, dict):
        raise CheckpointLoadError(f"{path / 'manifest.json'}: no 'sha256' object")
    for name, want in digests.items():
        f = path / str(name)
        if Path(str(name)).name != name:
            raise CheckpointLoadError(f"{path / 'manifest.json'}: {name!r} is not a file name")
        if not f.is_file():
            raise CheckpointLoadError(f"{f}: missing (listed in manifest.json)")
        if sha256_file(f) != want:
            raise CheckpointLoadError(f"{f}: its sha256 differs from the one recorded when it "
                                      "was saved; the checkpoint is damaged")


def _torch_load(path: Path, what: str):
    if not path.is_file():
        raise CheckpointLoadError(f"{path}: missing; the {what} is needed to resume exactly")
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointLoadError(f"{path}: refused to load ({first}); only tensors and plain "
                                  "values are read from a checkpoint") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointLoadError(f"{path}: damaged or not a torch file ({e})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a truncated or garbage file is a
    CheckpointLoadError naming it."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CheckpointLoadError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointLoadError(f"{path}: not a readable safetensors file ({e})") from None


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}


def load_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict:
    """Load weights (and optimizer, RNG) in place after checking the manifest; returns the
    trainer state."""
    path = Path(path)
    verify_checkpoint(path)
    state = read_json(path / "trainer_state.json")
    if not isinstance(state.get("step"), int) or state["step"] < 0:
        raise CheckpointLoadError(f"{path / 'trainer_state.json'}: no valid 'step' "
                                  f"({state.get('step')!r})")
    if (path / "sharded").is_dir():
        _load_sharded(path, model, optimizer)
    else:
        weights = read_safetensors(path / "model.safetensors")
        trained_only = _metadata(path / "model.safetensors").get("trained_only") == "true"
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointLoadError(f"{path / 'model.safetensors'}: does not fit the model "
                                      f"({str(e).splitlines()[-1].strip()})") from None
        may_miss = {"out_head.weight"} if getattr(getattr(model, "cfg", None), "tie_embeddings", False) else set()
        if trained_only:  # the frozen rest came from the base model, as when the run began
            frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
            may_miss |= frozen | {k for k, _ in model.named_buffers()}
            if set(weights) & frozen:
                raise CheckpointLoadError(f"{path / 'model.safetensors'}: holds parameters "
                                          "this run trains as frozen; the run's setup differs")
        if unexpected or set(missing) - may_miss:
            raise CheckpointLoadError(f"{path}: checkpoint does not fit the model "
                                      f"(missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})")
        if optimizer is not None:
            try:
                optimizer.load_state_dict(_torch_load(path / "optimizer.pt", "optimizer state"))
            except (ValueError, KeyError) as e:
                raise CheckpointLoadError(f"{path / 'optimizer.pt'}: does not fit the optimizer "
                                          f"({e})") from None
    if restore_rng:
        rng = _torch_load(path / "rng.pt", "random number generator state")
        if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
            raise CheckpointLoadError(f"{path / 'rng.pt'}: no torch RNG state")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state


# Settings a resumed run may change without breaking its exact continuation: how often it
# logs, evaluates and saves, where it runs, and how long (a longer max_steps extends the run; a
# schedule that depends on it then continues on the new horizon).
FREE_ON_RESUME = {"resume", "overwrite", "out", "sample_tokens", "sample_prompt",
                  "train.max_steps", "train.log_every", "train.eval_every", "train.eval_batches",
                  "train.save_every", "train.keep_last", "train.device", "train.num_workers",
                  "train.pin_memory", "train.tensorboard", "train.compile",
                  "train.grad_checkpointing", "train.lr_scale", "train.lr_scale_steps",
                  "train.skip_nonfinite", "train.resume_check"}
FREE_PREFIXES = ("eval.",)  # the evaluation of the final model


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for each setting present in both configs that differs and is
    not free to change on resume (model shape, batch size, data, seed, optimizer, schedule...)."""
    a, b = _flat(saved), _flat(current)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b))
            if a[k] != b[k] and k not in FREE_ON_RESUME and not k.startswith(FREE_PREFIXES)]


def check_resume(path: str | Path, config: dict, facts: dict) -> None:
    """Refuse to resume from ``path`` when its saved config or run facts (world size, number of
    training examples) differ from this run's where an exact continuation needs them equal;
    called before any weight is loaded."""
    path = Path(path)
    state = read_json(path / "trainer_state.json")
    saved = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    problems = resume_conflicts(saved, json.loads(json.dumps(config)))
    problems += [f"{k}: {state[k]!r} -> {v!r}" for k, v in facts.items()
                 if k in state and state[k] != v]
    if problems:
        raise CheckpointLoadError(
            f"--resume {path}: this run's settings differ from the checkpoint's where an exact "
            f"continuation needs them equal: {'; '.join(problems)}. Run with the saved settings "
            "(config.json in the checkpoint), or pass --train.resume_check false to continue "
            "anyway (not exactly).")


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

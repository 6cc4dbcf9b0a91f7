"""The run folder (``--out``) holds one run: a new run never writes into a previous one.

A folder holds a previous run when it has ``metrics.csv``, a ``final/`` model or a checkpoint.
Without ``--resume`` such a folder is refused, because the new run would truncate the old
metrics and prune some old checkpoints while leaving others that a later ``--resume`` would
pick up. ``--overwrite`` removes the previous run's outputs first (checkpoints, final model,
metrics, TensorBoard logs, evaluations, plots); files a run does not write are left alone.

A run that ends well has its model in ``final/``; its checkpoints (the weights again, with the
optimizer's two moments: three times the model) are then removed by ``finish_run`` unless
``--train.keep_checkpoints`` asks to keep them for a later ``--resume``. A run that fails or is
interrupted keeps them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

RUN_OUTPUTS = ("checkpoints", "final", "metrics.csv", "tb", "eval")


def previous_run(out: str | Path) -> list[str]:
    """What in ``out`` shows that a run already wrote there (empty: nothing)."""
    out = Path(out)
    found = [name for name in ("metrics.csv", "final") if (out / name).exists()]
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir()):
        found.append("checkpoints/")
    return found


def claim_run_dir(out: str | Path, resume: str | bool | None = None,
                  overwrite: bool = False) -> None:
    """Make ``out`` ready for a new run (or a resumed one): refuse a folder that holds another
    run unless ``resume`` continues it or ``overwrite`` replaces it."""
    out = Path(out)
    found = previous_run(out)
    if not found or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} holds a previous run ({', '.join(found)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out")
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for plot in out.glob("*.png"):
        plot.unlink()


def finish_run(out: str | Path, keep_checkpoints: bool) -> None:
    """After a run that ended well: remove ``checkpoints/`` when ``final/`` holds the model and
    the checkpoints were not asked for."""
    out = Path(out)
    ckpts = out / "checkpoints"
    if keep_checkpoints or not (out / "final").is_dir() or not ckpts.is_dir():
        return
    if _stopped_early(out):
        return  # interrupted: the checkpoint is how it continues
    shutil.rmtree(ckpts)
    print(f"checkpoints removed ({out / 'final'} holds the model; --train.keep_checkpoints true "
          "keeps them to extend the run with --resume)")


def _stopped_early(out: Path) -> bool:
    """Whether the newest checkpoint is short of its run's ``train.max_steps`` (Ctrl-C)."""
    from scratchlm.training.checkpoint import CheckpointLoadError, latest_checkpoint, read_json

    last = latest_checkpoint(out)
    if last is None:
        return False
    try:
        return read_json(last / "trainer_state.json")["step"] < read_json(
            last / "config.json")["train"]["max_steps"]
    except (CheckpointLoadError, KeyError, TypeError):
        return True  # unreadable: keep what is there

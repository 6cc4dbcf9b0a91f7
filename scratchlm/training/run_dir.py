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

One run at a time: ``claim_run_dir`` takes an exclusive ``flock`` on ``OUT/.lock`` (holding the
holder's pid) before it looks at the folder, so two runs started (or resumed) into one ``--out``
at the same moment cannot mix their metrics or prune each other's checkpoints; the second is
refused at once, naming the first's pid. The lock lives as long as the open file (and forked
DataLoader workers, which share it): until ``release_run_dir`` (``finish_run`` calls it) or the
end of the process, when the kernel drops it even after SIGKILL, so a crash never leaves a stale
lock. Under torchrun only the main rank claims the folder, so the ranks of one run never refuse
each other.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded against each other
    fcntl = None

RUN_OUTPUTS = ("checkpoints", "final", "metrics.csv", "tb", "eval")
LOCK_FILE = ".lock"

# The run folders this process holds: each open lock file keeps its lock. Keyed by the
# resolved folder, so a process may claim its own folder again (an in-process resume after a
# failed run, a test) without refusing itself.
_held: dict[Path, IO[str]] = {}


class RunDirBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


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
    """Make ``out`` ready for a new run (or a resumed one): lock it for this process (a folder
    another live run holds is refused), then refuse a folder that holds another run unless
    ``resume`` continues it or ``overwrite`` replaces it."""
    out = Path(out)
    lock_run_dir(out)
    found = previous_run(out)
    if not found or resume:
        return
    if not overwrite:
        release_run_dir(out)  # refused: no run of ours will use it
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


def lock_run_dir(out: str | Path) -> None:
    """Hold an exclusive lock on ``out`` (created if needed) until ``release_run_dir`` or the
    end of this process; ``RunDirBusy`` naming the holder's pid when another process has it."""
    key = Path(out).resolve()
    if fcntl is None or key in _held:
        return
    key.mkdir(parents=True, exist_ok=True)
    f = open(key / LOCK_FILE, "a+", encoding="utf-8")  # "a+": the holder's pid is not wiped
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown: it is starting"
        f.close()
        raise RunDirBusy(f"{out} is in use by another run (pid {holder}); wait for it to end, "
                         "or choose another --out") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = f


def release_run_dir(out: str | Path) -> None:
    """Let another process use ``out`` (a no-op when this process does not hold it)."""
    f = _held.pop(Path(out).resolve(), None)
    if f is not None:
        f.close()  # closing the only descriptor drops the flock


def finish_run(out: str | Path, keep_checkpoints: bool) -> None:
    """After a run that ended well: remove ``checkpoints/`` when ``final/`` holds the model and
    the checkpoints were not asked for; then release the folder's lock (last: a run let in
    earlier could lose the checkpoints it resumes from)."""
    try:
        _remove_checkpoints(Path(out), keep_checkpoints)
    finally:
        release_run_dir(out)


def _remove_checkpoints(out: Path, keep_checkpoints: bool) -> None:
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

"""The training loop every recipe shares: schedule, accumulation, evaluation, metrics, plots,
checkpoints and exact resume, Ctrl-C handling, a progress bar.

    for step in range(start, max_steps):
        set the learning rate for this step (a pure function of the step)
        take grad_accum_steps micro-batches -> train_step (accumulate, clip, update)
            (a loss module with ``batch_repeats = k`` gets the same micro-batches for k
            steps: GRPO's k passes over one rollout)
        every log_every: a metrics row      every eval_every: val loss, plot, on_eval()
        every save_every (and at the end, and on Ctrl-C): a checkpoint

Ctrl-C finishes the step, saves a checkpoint and raises ``TrainingInterrupted``: the recipe
stops there, writing no ``final/`` from a partly trained model, and ``scratchlm`` exits 130;
``--resume`` continues the run exactly.

What the recipe brings: the model, a loss module around it (already wrapped by DDP/FSDP if
distributed), the optimizer, and datasets of (inputs, targets) pairs.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from scratchlm.data.sampler import ResumableBatchSampler
from scratchlm.nn.moe import moe_stats
from scratchlm.training.config import TrainConfig, set_epochs  # noqa: F401 (re-exported)
from scratchlm.training.checkpoint import (CheckpointLoadError, check_resume, latest_checkpoint,
                                           load_checkpoint, read_json, save_checkpoint)
from scratchlm.training.distributed import is_sharded
from scratchlm.training.evaluation import evaluate_loss, perplexity
from scratchlm.training.metrics import MetricsLogger
from scratchlm.training.optim import set_lr
from scratchlm.training.plots import plot_losses
from scratchlm.training.runtime import Runtime
from scratchlm.training.schedule import lr_at, warmup_steps_of
from scratchlm.training.step import train_step


@dataclass
class FitResult:
    step: int
    tokens: int
    train_losses: list[float] = field(default_factory=list)  # per optimizer step
    val_losses: list[tuple[int, float]] = field(default_factory=list)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``fit`` after saving a checkpoint. A KeyboardInterrupt, so that a recipe
    cannot carry on to write ``final/`` by accident and the command line exits 130."""


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf more often than ``train.skip_nonfinite`` allows."""


class _StopFlag:
    """First Ctrl-C: finish the step, save, stop. Second: stop at once."""

    def __init__(self):
        self.stop = False

    def __call__(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        tqdm.write("interrupted: saving a checkpoint after this step (Ctrl-C again to abort)")


# A listener for every validation loss that ``fit`` computes, e.g. a hyperparameter search
# that prunes poor trials (``recipes/tune.py``); it may raise to stop the run.
_EVAL_LISTENER: contextvars.ContextVar[Callable[[int, float], None] | None] = \
    contextvars.ContextVar("eval_listener", default=None)


@contextlib.contextmanager
def report_evals(listener: Callable[[int, float], None]) -> Iterator[None]:
    """Within the block, ``listener(step, val_loss)`` is called after each evaluation."""
    token = _EVAL_LISTENER.set(listener)
    try:
        yield
    finally:
        _EVAL_LISTENER.reset(token)


def _expert_metrics(model: nn.Module) -> dict:
    """Expert utilisation of a mixture-of-experts model since the last log row."""
    stats = moe_stats(model)
    if stats is None:
        return {}
    return {"expert_share": stats["expert_share"], "expert_dropped_frac": stats["dropped_frac"],
            "moe_aux_loss": stats["aux_loss"]}


def _loss_metrics(inner: nn.Module) -> dict:
    """The loss module's own statistics of the step just taken (``step_metrics()``: GRPO's
    rewards, KL, clip fraction); ``inner``: the module inside any DDP wrapper."""
    fn = getattr(inner, "step_metrics", None)
    return fn() if fn is not None else {}


def _loss_state(inner: nn.Module, rt: Runtime) -> dict[str, str]:
    """``{"loss_state.json": ...}`` for a checkpoint when the loss module keeps state between
    steps (``checkpoint_state()``: a JSON-able value or None), one entry per rank; else {}."""
    get = getattr(inner, "checkpoint_state", None)
    if get is None:
        return {}
    states = [get()]
    if rt.distributed:
        import torch.distributed as dist

        states = [None] * rt.world_size
        dist.all_gather_object(states, get())
    if all(s is None for s in states):
        return {}
    return {"loss_state.json": json.dumps({"ranks": states})}


def _restore_loss_state(path: Path, inner: nn.Module, rt: Runtime) -> None:
    f = path / "loss_state.json"
    if not f.exists():
        return
    ranks = read_json(f).get("ranks")
    load = getattr(inner, "load_checkpoint_state", None)
    if load is None or not isinstance(ranks, list) or len(ranks) != rt.world_size:
        raise CheckpointLoadError(f"{f}: a loss state this run cannot take ("
                                  f"{type(inner).__name__}, {rt.world_size} rank(s))")
    try:
        load(ranks[rt.rank])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointLoadError(f"{f}: {e}") from None


def _mean_rows(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}


def fit(
    model: nn.Module,
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_data: Dataset,
    val_data: Dataset | None,
    cfg: TrainConfig,
    rt: Runtime,
    run_dir: str | Path,
    run_config: dict,
    flops_per_token: float | None = None,
    on_eval: Callable[[int], None] | None = None,
    resume: str | Path | bool | None = None,
    collate_fn: Callable | None = None,
) -> FitResult:
    """Train ``loss_module`` for ``cfg.max_steps`` optimizer steps (see the module docstring).
    ``collate_fn`` batches items that are not equal-sized tensors (instruction data).
    Checkpoints are sharded (``torch.distributed.checkpoint``) when FSDP2 shards the model.
    A loss module with ``step_metrics()`` adds its statistics to each metrics row (averaged
    over the steps since the last row); one with ``has_eval_loss = False`` (GRPO) has no
    loss on held-out batches, so evaluations only call ``on_eval``. ``on_eval(step)`` may
    return a dict of metrics, logged at that step. Ctrl-C: a checkpoint, then
    ``TrainingInterrupted`` (the module docstring)."""
    if cfg.max_steps < 1:
        raise ValueError(f"--train.max_steps must be >= 1, got {cfg.max_steps}")
    run_dir = Path(run_dir)
    sharded = is_sharded(loss_module)
    # lr_window: [first step, end step, multiplier] of a temporary LR scale; it is saved with
    # the checkpoints, so a run stopped inside the window resumes inside it.
    # cycle: the data position where the current micro-batches were drawn (batch_repeats)
    state = {"step": 0, "tokens": 0, "epoch": 0, "batch": 0, "lr_window": None, "cycle": None}
    inner = getattr(loss_module, "module", loss_module)  # DDP keeps the module as .module
    repeats = int(getattr(inner, "batch_repeats", 1))
    facts = {"world_size": rt.world_size, "examples": len(train_data)}  # checked on resume
    if resume:
        path = latest_checkpoint(run_dir) if resume is True or resume == "latest" else Path(resume)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {run_dir}/checkpoints")
        if cfg.resume_check:
            check_resume(path, run_config, facts)
        saved = load_checkpoint(path, model, optimizer)
        state.update({k: v for k, v in saved.items() if k not in facts})
        _restore_loss_state(path, inner, rt)
        if state["step"] % repeats:  # stopped between two passes over one batch: draw it again
            if not (isinstance(state["cycle"], list) and len(state["cycle"]) == 2):
                raise CheckpointLoadError(f"{path / 'trainer_state.json'}: stopped inside a "
                                          "batch's repeats without the batch's position")
            state["epoch"], state["batch"] = state["cycle"]
        if rt.is_main:
            tqdm.write(f"resumed from {path} at step {state['step']}")
    if cfg.lr_scale != 1.0 and cfg.lr_scale_steps > 0:
        state["lr_window"] = [state["step"], state["step"] + cfg.lr_scale_steps, cfg.lr_scale]
        if rt.is_main:
            tqdm.write(f"learning rate x{cfg.lr_scale} for steps {state['step']} to "
                       f"{state['step'] + cfg.lr_scale_steps - 1}, then the schedule again")
    metrics = MetricsLogger(run_dir, enabled=rt.is_main, tensorboard=cfg.tensorboard,
                            resume_step=state["step"] if resume else None)

    sampler = ResumableBatchSampler(len(train_data), cfg.batch_size, shuffle=True, seed=cfg.seed,
                                    rank=rt.rank, world_size=rt.world_size)
    sampler.set_position(state["epoch"], state["batch"])
    # An own generator: creating loader iterators must not draw from the global RNG, or a
    # resumed run would see different dropout masks than a straight one.
    loader = DataLoader(train_data, batch_sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=cfg.pin_memory, generator=torch.Generator(),
                        collate_fn=collate_fn)
    batches = iter(loader)

    def next_batch():
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            state["epoch"], state["batch"] = state["epoch"] + 1, 0
            sampler.set_position(state["epoch"], 0)
            batches = iter(loader)
            batch = next(batches)
        state["batch"] += 1
        return batch

    def eval_loader(ds: Dataset) -> DataLoader:
        n = min(len(ds), cfg.eval_batches * cfg.batch_size * rt.world_size)
        mine = list(range(rt.rank, n, rt.world_size))  # each rank a disjoint share
        return DataLoader(Subset(ds, mine), batch_size=cfg.batch_size, shuffle=False,
                          collate_fn=collate_fn)

    val_loader = eval_loader(val_data) if val_data is not None and len(val_data) else None
    train_eval_loader = eval_loader(train_data)
    scaler = rt.grad_scaler()
    peak = rt.peak_flops() if flops_per_token else None
    result = FitResult(state["step"], state["tokens"])
    eval_loss = getattr(inner, "has_eval_loss", True)
    # a perplexity only for a token cross-entropy (not DPO's or a classifier's loss)
    ppl = (lambda loss: perplexity(loss) if getattr(inner, "is_cross_entropy", False)  # noqa: E731
           and loss is not None else None)
    pending: list[dict] = []  # the loss module's statistics since the last metrics row
    stop = _StopFlag()
    old_handler = signal.signal(signal.SIGINT, stop)
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="training", unit="step",
               disable=not rt.is_main, dynamic_ncols=True)

    skipped = 0  # steps without an update because the loss or gradient was not finite

    def save():
        save_checkpoint(run_dir, state["step"], model, optimizer,
                        {**{k: state[k] for k in ("tokens", "epoch", "batch", "lr_window",
                                                  "cycle")},
                         **facts},
                        run_config,
                        keep_last=cfg.keep_last, sharded=sharded, is_main=rt.is_main,
                        texts=_loss_state(inner, rt))

    micro = None  # the step's micro-batches
    try:
        model.train()
        while state["step"] < cfg.max_steps:
            step = state["step"]
            lr = lr_at(step, schedule=cfg.schedule, lr=cfg.lr, max_steps=cfg.max_steps,
                       warmup_steps=warmup_steps_of(cfg), min_lr=cfg.min_lr,
                       initial_lr=cfg.initial_lr)
            window = state["lr_window"]
            if window is not None and window[0] <= step < window[1]:
                lr *= window[2]
            set_lr(optimizer, lr)
            t0 = time.perf_counter()
            if micro is None or step % repeats == 0:
                state["cycle"] = [state["epoch"], state["batch"]]
                micro = [next_batch() for _ in range(cfg.grad_accum_steps)]
            res = train_step(loss_module, optimizer, micro, rt, cfg.grad_clip or None, scaler)
            dt = time.perf_counter() - t0
            if res.skipped:
                skipped += 1
                what = (f"step {step + 1}: the loss is {res.loss} and the gradient norm "
                        f"{res.grad_norm}; no update was made")
                if skipped > cfg.skip_nonfinite:
                    last = latest_checkpoint(run_dir)
                    raise TrainingDiverged(
                        f"{what}. Training stopped before writing a checkpoint "
                        f"({skipped} non-finite step{'s' * (skipped > 1)}, --train.skip_nonfinite "
                        f"{cfg.skip_nonfinite}); the last good checkpoint is "
                        f"{last if last else 'none'}. Lower --train.lr, keep --train.grad_clip "
                        "on, or check the data.")
                if rt.is_main:
                    tqdm.write(f"{what} (skipped {skipped} of {cfg.skip_nonfinite} allowed)")
            state["step"] += 1
            state["tokens"] += res.tokens
            step = state["step"]
            result.train_losses.append(res.loss)
            tps = res.tokens / dt
            own = _loss_metrics(inner)
            if own:
                pending.append(own)
            bar.update(1)
            if "reward" in own:  # RL: the units are prompts, the reward says more than a rate
                bar.set_postfix(loss=f"{res.loss:.3f}", reward=f"{own['reward']:.3f}",
                                lr=f"{lr:.2e}")
            else:
                bar.set_postfix(loss=f"{res.loss:.3f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                mfu = tps * flops_per_token / peak if (peak and flops_per_token) else None
                metrics.log(step, tokens=state["tokens"], loss=res.loss, lr=lr,
                            grad_norm=res.grad_norm, tokens_per_s=tps, mfu=mfu,
                            peak_mem_mb=rt.peak_memory_mb(), **_expert_metrics(model),
                            **(_mean_rows(pending) if pending else {}))
                pending = []
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                val_loss = None
                if eval_loss:
                    train_loss = evaluate_loss(loss_module, train_eval_loader, rt)
                    # every rank joins the all-reduce, also one whose share of the validation
                    # windows is empty (an empty DataLoader is falsy)
                    val_loss = (evaluate_loss(loss_module, val_loader, rt)
                                if val_loader is not None else None)
                    metrics.log(step, tokens=state["tokens"], train_eval_loss=train_loss,
                                val_loss=val_loss,
                                val_ppl=ppl(val_loss))
                    if val_loss is not None:
                        result.val_losses.append((step, val_loss))
                    if rt.is_main:
                        msg = (f"step {step:>6} | tokens {state['tokens']:,} | train "
                               f"{train_loss:.3f}")
                        if val_loss is not None:
                            msg += f" | val {val_loss:.3f}"
                            if ppl(val_loss) is not None:
                                msg += f" (ppl {ppl(val_loss):.1f})"
                        tqdm.write(msg)
                if rt.is_main:
                    plot_losses(metrics.read(), run_dir / "loss.png",
                                unit=getattr(inner, "unit", "tokens"))
                logged = on_eval(step) if on_eval is not None else None
                if logged:
                    metrics.log(step, tokens=state["tokens"], **logged)
                listener = _EVAL_LISTENER.get()
                if listener is not None and val_loss is not None:
                    listener(step, val_loss)
            if step % cfg.save_every == 0 or step == cfg.max_steps or stop.stop:
                save()
            if stop.stop:
                break
    finally:
        bar.close()
        metrics.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    if stop.stop:
        done = state["step"]
        raise TrainingInterrupted(
            f"stopped after step {done} of {cfg.max_steps}; the checkpoint "
            f"{run_dir / 'checkpoints' / f'step-{done:06d}'} holds it: run the same command "
            "with --resume to continue")
    result.step, result.tokens = state["step"], state["tokens"]
    return result

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
from scratchlm.training.contract import LossHooks, hooks, unwrap
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


def _loss_state(h: LossHooks, rt: Runtime) -> dict[str, str]:
    """``{"loss_state.json": ...}`` for a checkpoint when the loss module keeps state between
    steps (its ``checkpoint_state`` hook: a JSON-able value or None), one entry per rank; else
    {}."""
    if h.checkpoint_state is None:
        return {}
    states = [h.checkpoint_state()]
    if rt.distributed:
        import torch.distributed as dist

        states = [None] * rt.world_size
        dist.all_gather_object(states, h.checkpoint_state())
    if all(s is None for s in states):
        return {}
    return {"loss_state.json": json.dumps({"ranks": states})}


def _restore_loss_state(path: Path, h: LossHooks, owner: str, rt: Runtime) -> None:
    f = path / "loss_state.json"
    if not f.exists():
        return
    ranks = read_json(f).get("ranks")
    if (h.load_checkpoint_state is None or not isinstance(ranks, list)
            or len(ranks) != rt.world_size):
        raise CheckpointLoadError(f"{f}: a loss state this run cannot take ({owner}, "
                                  f"{rt.world_size} rank(s))")
    try:
        h.load_checkpoint_state(ranks[rt.rank])
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
    What the loop asks of ``loss_module`` (``batch_weight`` and the optional hooks:
    ``step_metrics``, ``has_eval_loss``, ...) is ``training/contract.py``. ``on_eval(step)``
    may return a dict of metrics, logged at that step. Ctrl-C: a checkpoint, then
    ``TrainingInterrupted`` (the module docstring)."""
    if cfg.max_steps < 1:
        raise ValueError(f"--train.max_steps must be >= 1, got {cfg.max_steps}")
    run = _Run(model, loss_module, optimizer, cfg, rt, Path(run_dir), run_config,
               facts={"world_size": rt.world_size, "examples": len(train_data)})
    if resume:
        run.resume(resume)
    run.start_lr_window()
    metrics = MetricsLogger(run.dir, enabled=rt.is_main, tensorboard=cfg.tensorboard,
                            resume_step=run.state["step"] if resume else None)
    data = _Data(train_data, val_data, cfg, rt, collate_fn, run.state)
    result = FitResult(run.state["step"], run.state["tokens"])
    bar = tqdm(total=cfg.max_steps, initial=run.state["step"], desc="training", unit="step",
               disable=not rt.is_main, dynamic_ncols=True)
    logger = _StepLog(run, metrics, bar, flops_per_token)  # measures peak FLOP/s: before SIGINT
    stop = _StopFlag()
    old_handler = signal.signal(signal.SIGINT, stop)
    try:
        model.train()
        while run.state["step"] < cfg.max_steps:
            res, lr, seconds = run.step(data)
            result.train_losses.append(res.loss)
            step = run.state["step"]
            logger.log(res, lr, seconds, last=step == cfg.max_steps)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                _evaluate(run, data, metrics, result, on_eval)
            if step % cfg.save_every == 0 or step == cfg.max_steps or stop.stop:
                run.save()
            if stop.stop:
                break
    finally:
        bar.close()
        metrics.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    if stop.stop:
        done = run.state["step"]
        raise TrainingInterrupted(
            f"stopped after step {done} of {cfg.max_steps}; the checkpoint "
            f"{run.dir / 'checkpoints' / f'step-{done:06d}'} holds it: run the same command "
            "with --resume to continue")
    result.step, result.tokens = run.state["step"], run.state["tokens"]
    return result


class _Run:
    """What one run keeps between steps, and the four things done to it: resume, the
    learning-rate window, a step, a checkpoint."""

    def __init__(self, model, loss_module, optimizer, cfg: TrainConfig, rt: Runtime,
                 run_dir: Path, run_config: dict, facts: dict):
        self.model, self.loss_module, self.optimizer = model, loss_module, optimizer
        self.cfg, self.rt, self.dir, self.run_config = cfg, rt, run_dir, run_config
        self.facts = facts  # checked on resume
        self.hooks = hooks(loss_module)
        self.sharded = is_sharded(loss_module)
        # lr_window: [first step, end step, multiplier] of a temporary LR scale; it is saved
        # with the checkpoints, so a run stopped inside the window resumes inside it.
        # cycle: the data position where the current micro-batches were drawn (batch_repeats)
        self.state = {"step": 0, "tokens": 0, "epoch": 0, "batch": 0, "lr_window": None,
                      "cycle": None}
        self.scaler = rt.grad_scaler()
        self.skipped = 0  # steps without an update because the loss or gradient was not finite
        self.micro: list | None = None  # the step's micro-batches

    def resume(self, resume: str | Path | bool) -> None:
        path = (latest_checkpoint(self.dir) if resume is True or resume == "latest"
                else Path(resume))
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {self.dir}/checkpoints")
        if self.cfg.resume_check:
            check_resume(path, self.run_config, self.facts)
        saved = load_checkpoint(path, self.model, self.optimizer)
        state = self.state
        state.update({k: v for k, v in saved.items() if k not in self.facts})
        _restore_loss_state(path, self.hooks, type(unwrap(self.loss_module)).__name__, self.rt)
        if state["step"] % self.hooks.batch_repeats:  # stopped between two passes over one batch
            if not (isinstance(state["cycle"], list) and len(state["cycle"]) == 2):
                raise CheckpointLoadError(f"{path / 'trainer_state.json'}: stopped inside a "
                                          "batch's repeats without the batch's position")
            state["epoch"], state["batch"] = state["cycle"]  # draw it again
        if self.rt.is_main:
            tqdm.write(f"resumed from {path} at step {state['step']}")

    def start_lr_window(self) -> None:
        cfg, step = self.cfg, self.state["step"]
        if cfg.lr_scale != 1.0 and cfg.lr_scale_steps > 0:
            self.state["lr_window"] = [step, step + cfg.lr_scale_steps, cfg.lr_scale]
            if self.rt.is_main:
                tqdm.write(f"learning rate x{cfg.lr_scale} for steps {step} to "
                           f"{step + cfg.lr_scale_steps - 1}, then the schedule again")

    def lr(self, step: int) -> float:
        cfg = self.cfg
        lr = lr_at(step, schedule=cfg.schedule, lr=cfg.lr, max_steps=cfg.max_steps,
                   warmup_steps=warmup_steps_of(cfg), min_lr=cfg.min_lr,
                   initial_lr=cfg.initial_lr, decay_fraction=cfg.decay_fraction_value)
        window = self.state["lr_window"]
        return lr * window[2] if window is not None and window[0] <= step < window[1] else lr

    def step(self, data: "_Data"):
        """One optimizer step on the next micro-batches (the same ones again while a loss
        module's ``batch_repeats`` asks): (its StepResult, the learning rate, seconds)."""
        step, state = self.state["step"], self.state
        lr = self.lr(step)
        set_lr(self.optimizer, lr)
        t0 = time.perf_counter()
        if self.micro is None or step % self.hooks.batch_repeats == 0:
            state["cycle"] = [state["epoch"], state["batch"]]
            self.micro = [data.next_batch() for _ in range(self.cfg.grad_accum_steps)]
        res = train_step(self.loss_module, self.optimizer, self.micro, self.rt,
                         self.cfg.grad_clip or None, self.scaler)
        seconds = time.perf_counter() - t0
        if res.skipped:
            self._skipped(step, res)
        self.state["step"] += 1
        self.state["tokens"] += res.tokens
        return res, lr, seconds

    def _skipped(self, step: int, res) -> None:
        self.skipped += 1
        allowed = self.cfg.skip_nonfinite
        what = (f"step {step + 1}: the loss is {res.loss} and the gradient norm "
                f"{res.grad_norm}; no update was made")
        if self.skipped > allowed:
            last = latest_checkpoint(self.dir)
            raise TrainingDiverged(
                f"{what}. Training stopped before writing a checkpoint ({self.skipped} "
                f"non-finite step{'s' * (self.skipped > 1)}, --train.skip_nonfinite "
                f"{allowed}); the last good checkpoint is {last if last else 'none'}. Lower "
                "--train.lr, keep --train.grad_clip on, or check the data.")
        if self.rt.is_main:
            tqdm.write(f"{what} (skipped {self.skipped} of {allowed} allowed)")

    def save(self) -> None:
        state = self.state
        save_checkpoint(self.dir, state["step"], self.model, self.optimizer,
                        {**{k: state[k] for k in ("tokens", "epoch", "batch", "lr_window",
                                                  "cycle")},
                         **self.facts},
                        self.run_config,
                        keep_last=self.cfg.keep_last, sharded=self.sharded,
                        is_main=self.rt.is_main, texts=_loss_state(self.hooks, self.rt))


class _Data:
    """The training batches in the sampler's resumable order (their position kept in the
    run's state), and the evaluation loaders (each rank a disjoint share)."""

    def __init__(self, train_data, val_data, cfg: TrainConfig, rt: Runtime, collate_fn,
                 state: dict):
        self.cfg, self.rt, self.collate_fn, self.state = cfg, rt, collate_fn, state
        self.sampler = ResumableBatchSampler(len(train_data), cfg.batch_size, shuffle=True,
                                             seed=cfg.seed, rank=rt.rank,
                                             world_size=rt.world_size)
        self.sampler.set_position(state["epoch"], state["batch"])
        # An own generator: creating loader iterators must not draw from the global RNG, or a
        # resumed run would see different dropout masks than a straight one.
        self.loader = DataLoader(train_data, batch_sampler=self.sampler,
                                 num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                                 generator=torch.Generator(), collate_fn=collate_fn)
        self.batches = iter(self.loader)
        self.val = (self.eval_loader(val_data) if val_data is not None and len(val_data)
                    else None)
        self.train_eval = self.eval_loader(train_data)

    def next_batch(self):
        try:
            batch = next(self.batches)
        except StopIteration:
            self.state["epoch"], self.state["batch"] = self.state["epoch"] + 1, 0
            self.sampler.set_position(self.state["epoch"], 0)
            self.batches = iter(self.loader)
            batch = next(self.batches)
        self.state["batch"] += 1
        return batch

    def eval_loader(self, ds: Dataset) -> DataLoader:
        cfg, rt = self.cfg, self.rt
        n = min(len(ds), cfg.eval_batches * cfg.batch_size * rt.world_size)
        mine = list(range(rt.rank, n, rt.world_size))  # each rank a disjoint share
        return DataLoader(Subset(ds, mine), batch_size=cfg.batch_size, shuffle=False,
                          collate_fn=self.collate_fn)


class _StepLog:
    """A step's progress bar and, every ``log_every``, its metrics row (with the loss module's
    own statistics averaged over the steps since the last row)."""

    def __init__(self, run: _Run, metrics: MetricsLogger, bar, flops_per_token: float | None):
        self.run, self.metrics, self.bar = run, metrics, bar
        self.flops_per_token = flops_per_token
        self.peak = run.rt.peak_flops() if flops_per_token else None
        self.pending: list[dict] = []  # the loss module's statistics since the last row

    def log(self, res, lr: float, seconds: float, last: bool) -> None:
        run, state = self.run, self.run.state
        tps = res.tokens / seconds
        own = run.hooks.step_metrics() if run.hooks.step_metrics is not None else {}
        if own:
            self.pending.append(own)
        self.bar.update(1)
        if "reward" in own:  # RL: the units are prompts, the reward says more than a rate
            self.bar.set_postfix(loss=f"{res.loss:.3f}", reward=f"{own['reward']:.3f}",
                                 lr=f"{lr:.2e}")
        else:
            self.bar.set_postfix(loss=f"{res.loss:.3f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}")
        if state["step"] % run.cfg.log_every == 0 or last:
            mfu = (tps * self.flops_per_token / self.peak
                   if (self.peak and self.flops_per_token) else None)
            self.metrics.log(state["step"], tokens=state["tokens"], loss=res.loss, lr=lr,
                             grad_norm=res.grad_norm, tokens_per_s=tps, mfu=mfu,
                             peak_mem_mb=run.rt.peak_memory_mb(), **_expert_metrics(run.model),
                             **(_mean_rows(self.pending) if self.pending else {}))
            self.pending = []


def _evaluate(run: _Run, data: _Data, metrics: MetricsLogger, result: FitResult,
              on_eval: Callable[[int], dict | None] | None) -> None:
    """Train and validation loss (a loss module with ``has_eval_loss``), the loss plot, the
    recipe's ``on_eval``, and the listener of ``report_evals``."""
    rt, state, step = run.rt, run.state, run.state["step"]
    ppl = (lambda loss: perplexity(loss) if run.hooks.is_cross_entropy  # noqa: E731
           and loss is not None else None)  # only a token cross-entropy has a perplexity
    val_loss = None
    if run.hooks.has_eval_loss:
        train_loss = evaluate_loss(run.loss_module, data.train_eval, rt)
        # every rank joins the all-reduce, also one whose share of the validation windows is
        # empty (an empty DataLoader is falsy)
        val_loss = (evaluate_loss(run.loss_module, data.val, rt)
                    if data.val is not None else None)
        metrics.log(step, tokens=state["tokens"], train_eval_loss=train_loss, val_loss=val_loss,
                    val_ppl=ppl(val_loss))
        if val_loss is not None:
            result.val_losses.append((step, val_loss))
        if rt.is_main:
            msg = f"step {step:>6} | tokens {state['tokens']:,} | train {train_loss:.3f}"
            if val_loss is not None:
                msg += f" | val {val_loss:.3f}"
                if ppl(val_loss) is not None:
                    msg += f" (ppl {ppl(val_loss):.1f})"
            tqdm.write(msg)
    if rt.is_main:
        plot_losses(metrics.read(), run.dir / "loss.png", unit=run.hooks.unit)
    logged = on_eval(step) if on_eval is not None else None
    if logged:
        metrics.log(step, tokens=state["tokens"], **logged)
    listener = _EVAL_LISTENER.get()
    if listener is not None and val_loss is not None:
        listener(step, val_loss)

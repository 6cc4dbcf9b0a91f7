"""One place that makes a model ready for training, for every recipe: activation checkpointing,
``torch.compile``, and data parallelism (DDP, or FSDP2 where the recipe saves sharded), plus
the session every recipe runs in (runtime setup, the run folder, teardown).

    with training_session(cfg.train, cfg.out) as (rt, out):
        model = ...                                      # built or loaded, LoRA applied
        loss = prepare_training(MyLoss(model), model, rt, cfg.train)
        fit(model, loss, optimizer, ...)                 # the shared loop
        if rt.is_main: save ...

A flag either does what it says in every recipe or is refused here with a message: none is
accepted and ignored. Precision is the runtime's (``rt.autocast()`` inside the step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from scratchlm.nn.moe import moe_layers
from scratchlm.nn.nf4 import NF4Linear
from scratchlm.training.distributed import (  # noqa: F401 (is_sharded, whole_model re-exported)
    STRATEGIES, is_sharded, parallelize, whole_model)
from scratchlm.training.run_dir import claim_run_dir, finish_run, release_run_dir
from scratchlm.training.runtime import Runtime, setup_runtime, teardown_runtime


def core_model(model: nn.Module) -> nn.Module:
    """The model whose blocks train: ``model`` itself, or the frozen model inside a wrapper
    (a prompt-tuning ``PromptTuned`` holds it as ``.model``)."""
    while not hasattr(model, "trf_blocks") and isinstance(getattr(model, "model", None),
                                                           nn.Module):
        model = model.model
    return model


def prepare_training(loss_module: nn.Module, model: nn.Module, rt: Runtime,
                     train) -> nn.Module:
    """Apply ``train.grad_checkpointing``, ``train.compile`` and ``train.strategy`` (a
    ``TrainConfig``) to ``model`` and its ``loss_module``; returns the module to train (wrapped
    by DDP or sharded by FSDP2 under torchrun, else ``loss_module`` itself).

    Build the optimizer after this call (FSDP2 replaces the parameters), and save or generate
    from ``whole_model(model, rt)`` (the gathered model under FSDP2) on the main rank."""
    core = core_model(model)
    name = type(core).__name__
    if train.strategy not in STRATEGIES:
        raise ValueError(f"--train.strategy must be one of {STRATEGIES}, got {train.strategy!r}")
    cfg = getattr(core, "cfg", None)
    if train.grad_checkpointing:
        if cfg is None or not hasattr(cfg, "grad_checkpointing"):
            raise ValueError(f"--train.grad_checkpointing: {name} has no block checkpointing")
        cfg.grad_checkpointing = True
    elif cfg is not None and hasattr(cfg, "grad_checkpointing"):
        cfg.grad_checkpointing = False
    if train.compile:
        blocks = getattr(core, "trf_blocks", None)
        if blocks is None:
            raise ValueError(f"--train.compile: {name} has no transformer blocks to compile")
        for block in blocks:
            block.compile()
    if rt.distributed and train.strategy == "fsdp":
        if any(isinstance(m, NF4Linear) for m in loss_module.modules()):
            raise ValueError("--train.strategy fsdp with a 4-bit (QLoRA) base is not supported "
                             "(its NF4 weights are buffers FSDP2 cannot shard); use "
                             "--train.strategy ddp")
    return parallelize(loss_module, rt, train.strategy,
                       find_unused_parameters=bool(moe_layers(model)), model=model)


@contextlib.contextmanager
def training_session(train, out: str | Path, seed: int | None = None, *,
                     resume: str | bool | None = None,
                     overwrite: bool = False) -> Iterator[tuple[Runtime, Path]]:
    """Set up the runtime (device, precision, seed (default ``train.seed``), the process group
    under torchrun), claim the run folder (on the main rank; one holding another run is refused
    unless ``resume`` or ``overwrite``, see ``run_dir.py``), and tear down at the end, also on
    errors."""
    rt = setup_runtime(train.precision, train.device, train.seed if seed is None else seed)
    try:
        out = Path(out)
        if rt.is_main:
            claim_run_dir(out, resume, overwrite)
            out.mkdir(parents=True, exist_ok=True)
        rt.barrier()
        yield rt, out
        if rt.is_main:
            finish_run(out, train.keep_checkpoints)
    finally:
        release_run_dir(out)  # a failed run in a long-lived process lets others in
        teardown_runtime(rt)

"""Wrap a loss module for data parallelism: DDP (every rank holds the whole model) or FSDP2
(``fully_shard``: parameters, gradients and optimizer state sharded across ranks), and get the
whole trained model back on the main rank to save it.

Launch with torchrun, e.g. ``torchrun --nproc_per_node 8 -m scratchlm pretrain ...``; several
machines add ``--nnodes N --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT``.

Under FSDP2 every transformer block in the loss module (the student's and a teacher's alike) is
its own shard group, each model's embeddings and head another (so the model can be called on
its own, on every rank, e.g. to generate a sample), and what is left the root group; frozen
base weights and trainable LoRA adapters share a group (FSDP2 reduces only the gradients that
exist). Build the optimizer *after* ``parallelize``: sharding replaces the parameters.
"""

from __future__ import annotations

import copy
import itertools
import weakref

import torch
from torch import nn

from scratchlm.training.runtime import Runtime

STRATEGIES = ("ddp", "fsdp")

# model -> its structure with meta-device parameters, taken just before sharding (whole_model)
_SKELETONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parallelize(loss_module: nn.Module, rt: Runtime, strategy: str = "ddp",
                find_unused_parameters: bool = False, model: nn.Module | None = None) -> nn.Module:
    """``loss_module`` for this runtime: itself in one process, else DDP- or FSDP2-wrapped.
    ``find_unused_parameters``: for models where a step may leave parameters without a
    gradient (mixture-of-experts layers whose experts got no token). ``model``: the trained
    model inside ``loss_module``, kept restorable for ``whole_model`` under FSDP."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not rt.distributed:
        return loss_module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        return DDP(loss_module, device_ids=ids, find_unused_parameters=find_unused_parameters)
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    cores = [m for m in loss_module.modules()
             if isinstance(getattr(m, "trf_blocks", None), nn.ModuleList)]
    if not cores:
        raise ValueError("fsdp needs a model with trf_blocks")
    if model is not None:
        _SKELETONS[model] = _meta_copy(model)
    inside = set(model.modules()) if model is not None else set()
    outer = ([model] if model is not None else []) + [m for m in cores if m not in inside]
    for core in cores:
        for block in core.trf_blocks:
            fully_shard(block)
    for m in outer:
        # Kept gathered between forwards (like a root): callers run ``hidden_states`` and then
        # the head on their own (fused losses, the engine, classifiers), and a model may be
        # called outside the loss module on every rank (samples, accuracy).
        fully_shard(m, reshard_after_forward=False)
        if hasattr(m, "hidden_states"):
            register_fsdp_forward_method(m, "hidden_states")
    fully_shard(loss_module)
    if find_unused_parameters:  # zeros for experts that got no token, as DDP's flag does
        loss_module.set_reduce_scatter_unused_params(True)
    return loss_module


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 manages ``module`` (its checkpoints are then saved sharded)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _meta_copy(model: nn.Module) -> nn.Module:
    """``model``'s structure (LoRA layers, heads, config) with parameters on the meta device
    (no memory); buffers, which FSDP does not shard, are shared rather than copied."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"),
                                   requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b
    return copy.deepcopy(model, memo)


def whole_model(model: nn.Module, rt: Runtime) -> nn.Module | None:
    """The trained ``model`` with full parameters for saving and generating on the main rank:
    ``model`` itself unless FSDP2 sharded it; then every rank must call this (the parameters
    are gathered), the main rank gets an unsharded copy and the others ``None``."""
    skeleton = _SKELETONS.get(model)
    if skeleton is None:
        return model if rt.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    if not rt.is_main:
        return None
    tied = {}  # parameters one Parameter serves under several names (tied embeddings)
    for name, p in skeleton.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(name)
    skeleton.load_state_dict(full, strict=False, assign=True)
    for names in tied.values():
        first = skeleton.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(skeleton.get_submodule(owner), attr, first)
    missing = [n for n, p in itertools.chain(skeleton.named_parameters(),
                                             skeleton.named_buffers()) if p.is_meta]
    if missing:
        raise RuntimeError(f"whole_model: no gathered value for {missing[:5]}")
    return skeleton.to(rt.device)

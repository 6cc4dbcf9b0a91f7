"""Wrap a loss module for data parallelism: DDP (every rank holds the whole model) or FSDP2
(``fully_shard``: parameters, gradients and optimizer state sharded across ranks).

Launch with torchrun, e.g. ``torchrun --nproc_per_node 8 -m scratchlm pretrain ...``; several
machines add ``--nnodes N --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT``.
"""

from __future__ import annotations

from torch import nn

from scratchlm.training.runtime import Runtime

STRATEGIES = ("ddp", "fsdp")


def parallelize(loss_module: nn.Module, rt: Runtime, strategy: str = "ddp",
                find_unused_parameters: bool = False) -> nn.Module:
    """``loss_module`` for this runtime: itself in one process, else DDP- or FSDP2-wrapped.
    ``find_unused_parameters``: for models where a step may leave parameters without a
    gradient (mixture-of-experts layers whose experts got no token)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not rt.distributed:
        return loss_module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        return DDP(loss_module, device_ids=ids, find_unused_parameters=find_unused_parameters)
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(loss_module.model, "trf_blocks", None)
    if blocks is None:
        raise ValueError("fsdp needs a model with trf_blocks")
    for block in blocks:
        fully_shard(block)
    fully_shard(loss_module)
    return loss_module

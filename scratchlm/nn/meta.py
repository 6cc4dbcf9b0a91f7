"""Building a model with no storage behind its weights (the meta device), for loaders that fill
it from a checkpoint and for exact parameter counts."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

_NORMAL = ("normal_", "trunc_normal_")


def _meta_passes(init):
    def run(tensor, *args, **kwargs):
        return tensor if tensor.is_meta else init(tensor, *args, **kwargs)
    run.__wrapped__ = init
    return run


@contextmanager
def meta_device():
    """``torch.device("meta")``, with ``nn.init.normal_`` / ``trunc_normal_`` passing meta
    tensors through: a meta tensor has no values to draw, and the first normal_ on one imports
    torch._dynamo (2.4 s of every loading process's start with torch 2.13). Tensors off the
    meta device (another thread's) are initialised as ever."""
    saved = {name: getattr(nn.init, name) for name in _NORMAL}
    for name, init in saved.items():
        setattr(nn.init, name, _meta_passes(init))
    try:
        with torch.device("meta"):
            yield
    finally:
        for name, init in saved.items():
            setattr(nn.init, name, init)

"""Measured tensor memory on any device, CPU included: a dispatch mode that sees every tensor
an operation creates, counts its storage while it lives and keeps the peak.

    with MemoryTracker(model, optimizer) as mem:     # what already exists counts too
        loss_module(x, y).backward(); optimizer.step()
    mem.peak_bytes

CUDA has ``torch.cuda.max_memory_allocated``; on CPU the process RSS mixes tensors with the
interpreter, libraries and allocator caches, so the planner's test (``scratchlm plan``) checks
its numbers against this instead. Storages are counted once however many views share them;
sparse gradients count their indices and values.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


class MemoryTracker(TorchDispatchMode):
    def __init__(self, *existing: nn.Module | torch.optim.Optimizer | torch.Tensor):
        super().__init__()
        self._live = WeakIdKeyDictionary()  # storage -> bytes
        self.current_bytes = 0
        self.peak_bytes = 0
        for obj in existing:
            self.track_existing(obj)

    def track_existing(self, obj) -> None:
        """Count tensors that exist before tracking starts: a module's parameters, buffers
        and gradients, an optimizer's states, or a tensor."""
        if isinstance(obj, torch.Tensor):
            self._track(obj)
        elif isinstance(obj, nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                self._track(t)
                if t.grad is not None:
                    self._track(t.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        self._track(v)

    def _free(self, nbytes: int) -> None:
        self.current_bytes -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        if t.is_sparse:
            self._track(t._indices())
            self._track(t._values())
            return
        if t.layout != torch.strided or t.device.type == "meta":
            return
        st = t.untyped_storage()
        if st in self._live:
            return
        n = st.nbytes()
        self._live[st] = n
        weakref.finalize(st, self._free, n)
        self.current_bytes += n
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

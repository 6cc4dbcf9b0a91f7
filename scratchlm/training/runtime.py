"""Device, precision and distributed setup: the one explicit runtime call a recipe makes.

Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set) it joins the process group: NCCL on CUDA,
gloo on CPU. Nothing here runs at import.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Dense bf16 peak FLOP/s of common GPUs, for MFU (from the vendors' data sheets).
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
                  "A10": 125e12, "4090": 165e12}


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this runtime started the process group (and so ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self):
        """fp16 needs loss scaling; bf16 and fp32 do not."""
        if self.precision == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def peak_flops(self) -> float | None:
        """The MFU denominator: a data-sheet number on known GPUs, a measured fp32 matmul
        rate on CPU (one 0.2 s measurement)."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
        n = 1024
        g = torch.Generator().manual_seed(0)  # not the global RNG: resume must stay exact
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        a @ b
        t0, reps = time.perf_counter(), 10
        for _ in range(reps):
            a @ b
        return 2 * n**3 * reps / (time.perf_counter() - t0)

    def memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bf16_native(device_type: str = "cpu") -> bool:
    """Whether matrix products in bf16 run on native units here: a GPU, or a CPU with
    avx512_bf16 / AMX (there a bf16 product is about twice as fast as fp32's)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_summary() -> str:
    """One line naming this CPU and what our speed depends on: its vector ISA as PyTorch sees
    it (AVX512, AVX2, ...), whether bf16 matrix units exist, and PyTorch's thread count."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    name = name or platform.processor() or platform.machine()
    bf16 = "bf16 units" if bf16_native("cpu") else "no bf16 units"
    return (f"{name}, {torch.backends.cpu.get_cpu_capability()}, {bf16}, "
            f"{torch.get_num_threads()} threads")


def setup_runtime(precision: str = "auto", device: str | None = None, seed: int = 0) -> Runtime:
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    owns = world > 1 and not dist.is_initialized()  # else a caller's (the speedrun's) group
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("precision fp16 needs CUDA (use fp32 or bf16 on CPU)")
    torch.manual_seed(seed)
    return Runtime(dev, precision, rank, world, local, owns)


def teardown_runtime(rt: Runtime) -> None:
    if rt.owns_group and dist.is_initialized():
        dist.destroy_process_group()

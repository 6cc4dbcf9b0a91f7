"""Where a loaded model runs for generation: its device and weight dtype, checked before any
weight is read, so ``--device cuda`` on a machine without CUDA or ``--dtype fp16`` on a CPU is
refused with a message instead of failing deep inside a kernel.

Training takes its device and precision from the runtime (``training/runtime.py``: autocast
over fp32 weights); inference stores the weights themselves in the chosen dtype.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def placement(device: str = "cpu", dtype: str = "fp32") -> tuple[torch.device, torch.dtype]:
    """(device, dtype) for ``--device`` (cpu | cuda | cuda:N) and ``--dtype`` (fp32 | bf16 |
    fp16; fp16 only on CUDA, where bf16 needs a chip that has it)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError("--dtype bf16: this GPU has no bf16 support; use fp16 or fp32")
    elif dtype == "fp16":
        raise ValueError("--dtype fp16 needs CUDA (use fp32, or bf16, on the CPU)")
    return dev, DTYPES[dtype]

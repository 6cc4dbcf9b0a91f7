"""Native CPU kernels: small C files in ``nn/csrc`` built with the system C compiler on first
use and called through ``ctypes``.

    csrc/decode.c --cc -O3 -march=native -mtune=generic -fopenmp--> $SCRATCHLM_CACHE/kernels/<h>.so

A kernel is built for the machine it runs on (``-march=native``), so it uses whatever vector
instructions the CPU has, and links the OpenMP runtime that PyTorch has already loaded (the
same ``libgomp.so.1``), so it shares PyTorch's thread count. The library is written to a
temporary name and renamed, so a build interrupted half way is never loaded. Nothing here is
required: with no compiler (or ``SCRATCHLM_NATIVE=0``) ``load`` returns None and callers keep
their pure-PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a kernel runs: building one needs no torch
    import torch

CSRC = Path(__file__).parent / "csrc"
# -mtune=generic: gcc 12's tuning for this Xeon (rocketlake) scheduled the one-row 8-bit
# Q4_K kernel at half speed (3072 x 1536: 165 vs 73 us) and the float Q6_K at 0.75x; no
# kernel measured slower with the generic tuning (docs/llama.md)
FLAGS = ("-O3", "-march=native", "-mtune=generic", "-fPIC", "-shared")
# what a kernel is built for: this CPU (every vector unit it has); an AVX2 build (csrc/decode.c's
# AVX2 + FMA intrinsics: what -march=native gives a CPU without AVX-512, built here so that it
# is tested here; x86-64 only); the same with AVX-VNNI (Intel's client CPUs since Alder Lake:
# 256-bit integer dot products, no AVX-512), where the CPU has it; or a portable build (plain C
# vectorized for the architecture's baseline)
VARIANTS = {"native": FLAGS, "avx2": ("-O3", "-mavx2", "-mfma", "-mf16c", "-fPIC", "-shared"),
            "avxvnni": ("-O3", "-mavx2", "-mfma", "-mf16c", "-mavxvnni", "-fPIC", "-shared"),
            "portable": ("-O3", "-fPIC", "-shared")}
# code whose float arithmetic must round as written, the same on every CPU: the architecture's
# baseline with no fused multiply-adds (csrc/quantize.c, which must equal llama.cpp's reference
# quantizers byte for byte; llama.cpp builds those in its ISA-neutral base library)
EXACT = ("-O2", "-ffp-contract=off", "-fPIC", "-shared")


def default_variant() -> str:
    """The variant kernels are built as: ``SCRATCHLM_NATIVE_VARIANT`` (native, avx2, avxvnni
    or portable; default native), so that every variant can be run and timed on one machine."""
    variant = os.environ.get("SCRATCHLM_NATIVE_VARIANT", "native")
    if variant not in VARIANTS:
        raise ValueError(f"SCRATCHLM_NATIVE_VARIANT={variant!r}: must be one of "
                         f"{', '.join(VARIANTS)}")
    return variant


def variants() -> list[str]:
    """The build variants this machine can run (torch knows whether the CPU has AVX2; Linux's
    /proc/cpuinfo whether it has AVX-VNNI)."""
    import torch

    avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    runs = {"avx2": avx2, "avxvnni": avx2 and "avx_vnni" in flags}
    return [v for v in VARIANTS if runs.get(v, True)]


def kernel_dir() -> Path:
    """Where built kernels are kept: ``$SCRATCHLM_CACHE/kernels`` (the download cache's rule)."""
    env = os.environ.get("SCRATCHLM_CACHE")
    base = Path(env).expanduser() if env else \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scratchlm"
    return base / "kernels"


def openmp() -> bool:
    """Whether kernels are built with OpenMP where the compiler has it (the default), or
    without (``SCRATCHLM_NATIVE_OPENMP=0``: the pthread pool of csrc/parallel.h, what a
    compiler without OpenMP such as Apple's clang gets, built here so that it is tested here)."""
    return os.environ.get("SCRATCHLM_NATIVE_OPENMP", "1") != "0"


def _compile(source: Path, out: Path, flags: tuple[str, ...] = FLAGS) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    # OpenMP's threads (torch's runtime), else csrc/parallel.h's pthread pool with the
    # compiler's `omp simd` loops still vectorized, else plain
    tries = [("-fopenmp",)] if openmp() else []
    tries += [("-fopenmp-simd", "-pthread"), ("-pthread",)]
    try:
        for extra in tries:
            done = subprocess.run([cc, *flags, *extra, str(source), "-o", tmp],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                os.replace(tmp, out)
                return
        raise RuntimeError(f"{cc} failed on {source.name}:\n{done.stderr[-2000:]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _torch_version() -> str:
    """The installed torch's version, read without importing torch (a kernel is rebuilt when
    torch changes: it links the OpenMP runtime torch loads)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return ""


def build_key(name: str, flags: tuple[str, ...], csrc: Path = CSRC) -> str:
    """What a built library is named by: every file of ``csrc`` (a header, or any file a source
    includes, changes the build as much as the source does), the flags, this machine and the
    installed torch."""
    code = b"".join(f.name.encode() + b"\0" + f.read_bytes()
                    for f in sorted(csrc.iterdir()) if f.is_file())
    return hashlib.sha256(code + name.encode() + " ".join(flags).encode()
                          + platform.machine().encode() + platform.node().encode()
                          + _torch_version().encode()).hexdigest()[:16]


def load(name: str, variant: str | None = None) -> ctypes.CDLL | None:
    """The built library ``csrc/<name>.c`` (``variant``: one of ``VARIANTS`` or ``"exact"``
    (``EXACT``'s flags), default ``default_variant()``), or None (with one warning) when it
    cannot be built or native kernels are switched off."""
    return _load(name, variant or default_variant())


@cache
def _load(name: str, variant: str) -> ctypes.CDLL | None:
    if os.environ.get("SCRATCHLM_NATIVE", "1") == "0":
        return None
    source, flags = CSRC / f"{name}.c", EXACT if variant == "exact" else VARIANTS[variant]
    key = build_key(name, flags + (() if openmp() else ("no-openmp",)))
    lib = kernel_dir() / f"{name}-{key}.so"
    try:
        if not lib.exists():
            _compile(source, lib, flags)
        handle = ctypes.CDLL(str(lib))
    except (OSError, RuntimeError) as e:
        warnings.warn(f"native kernel {name} unavailable, using PyTorch ops: {e}", stacklevel=2)
        return None
    if hasattr(handle, "set_threads"):  # -1: OpenMP's threads, torch's; else the pool's size
        handle.set_threads.argtypes, handle.set_threads.restype = [ctypes.c_int64], ctypes.c_int64
        handle.set_threads(thread_count())
    return handle


def thread_count() -> int:
    """Threads for a kernel library built without OpenMP: torch's count where torch is loaded,
    else the CPUs this process may run on."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class Weight(ctypes.Structure):
    """csrc/decode.h's ``Weight``: a float32, int8 (with per-row scales) or GGUF-block matrix;
    ``fmt`` is one of ``FORMATS``."""

    _fields_ = [("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("rows", ctypes.c_int64), ("fmt", ctypes.c_int64)]


# csrc/decode.h's FMT_* codes: how a Weight's rows are stored (tests/nn/test_native_header.py
# holds this table, ACT8 and SIGNATURES to the header)
FORMATS = {"f32": 0, "int8": 1, "Q8_0": 2, "Q4_0": 3, "Q4_1": 4, "Q4_K": 5, "Q6_K": 6,
           "f32_panels": 7, "Q5_0": 8, "Q5_1": 9, "Q5_K": 10}
# a flag added to a block format's code: round the activations to 8 bits and multiply integers
# (csrc/act8.h; quantize="gguf-a8")
ACT8 = 256


P, I64, F32, W = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.POINTER(Weight)
# argument types of csrc/decode.h's entry points (see there for what each argument is)
SIGNATURES = {
    "int8_linear": [P] * 5 + [I64] * 3,
    "f32_linear": [P] * 4 + [I64] * 3,
    "panel_linear": [P] * 4 + [I64] * 3,
    "f32_panels": [P, I64, I64, P],
    "gguf_linear": [P, P, I64, P, P] + [I64] * 3,
    "gguf_dequantize": [P, I64, P, I64, I64],
    "llama_layer": [P] + [I64] * 6 + [F32, P, W, I64, W, P, W, I64, W] + [P] * 4
                   + [I64, I64, P, P, P],
    "gpt_layer": [P] + [I64] * 5 + [F32, P, P, W, W, P, P, W, W, P, P] + [I64, I64, P],
    "simd_block_formats": [],
    "act8_block_formats": [],
    "act8_max_rows": [],
}
# the entry points that return something
RESULTS = {"simd_block_formats": I64, "act8_block_formats": I64, "act8_max_rows": I64}


def decode_function(name: str, variant: str | None = None):
    """The function ``name`` of csrc/decode.c (built as ``variant``, default
    ``default_variant()``), typed for ctypes, or None when the library is unavailable."""
    return _decode_function(name, variant or default_variant())


@cache
def _decode_function(name: str, variant: str):
    lib = load("decode", variant)
    if lib is None:
        return None
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = SIGNATURES[name], RESULTS.get(name)
    return fn


# csrc/quantize.c's entry points, built as EXACT (export/quants.py)
QUANTIZE_SIGNATURES = {"quantize_blocks": [P, P, I64, I64], "halves_to_floats": [P, P, I64]}


@cache
def quantize_function(name: str):
    """The function ``name`` of csrc/quantize.c (the ``exact`` build), typed for ctypes, or
    None when the library is unavailable."""
    lib = load("quantize", "exact")
    if lib is None:
        return None
    fn = getattr(lib, name)
    fn.argtypes = QUANTIZE_SIGNATURES[name]
    return fn


def clear_cache() -> None:
    """Forget the loaded libraries and functions (after ``SCRATCHLM_NATIVE`` changes)."""
    _load.cache_clear()
    _decode_function.cache_clear()
    quantize_function.cache_clear()


def simd_block_formats(variant: str | None = None) -> set[str]:
    """The GGUF block formats the built kernel multiplies in vector registers (the rest of the
    block formats take its generic path: dequantize a block, then multiply); empty without a
    kernel. What ``quantize="auto"`` asks before it keeps a file's blocks."""
    return _formats("simd_block_formats", variant)


def act8_block_formats(variant: str | None = None) -> set[str]:
    """The GGUF block formats the built kernel multiplies with activations rounded to 8 bits
    (integer dot products, csrc/act8.h: x86 builds with AVX2; act8_neon.h: aarch64); empty
    without them. What
    ``quantize="gguf-a8"`` needs for every block format of a file."""
    return _formats("act8_block_formats", variant)


def _formats(entry: str, variant: str | None) -> set[str]:
    fn = decode_function(entry, variant)
    bits = fn() if fn is not None else 0
    return {name for name, code in FORMATS.items() if bits >> code & 1}



HEAD_MAX_ROWS = 128


def head_linear(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for the few rows of a decode step, through ``f32_linear`` when ``layer`` is
    a float32 ``nn.Linear`` on the CPU with contiguous weights: PyTorch streams a
    (vocabulary x n_embd) head at about half the memory bandwidth the C matvec reaches
    (12.6 vs 25 GB/s for Gemma 3's 262144 x 640 on this 2-core CPU), and up to
    ``HEAD_MAX_ROWS`` rows its tiles beat PyTorch's GEMM too (SmolLM2's 49152 x 576 head: 165 vs
    91 GFLOP/s for 32 rows, a rollout's batch; 163 vs 146 for 128; 158 vs 171 for 256).
    Anything else, and more rows, goes to ``layer`` itself. A soft-capped head
    (``nn/softcap.py``, Gemma 4's 262144 x 1536) takes the same matvec and then its cap."""
    import torch

    from scratchlm.nn.softcap import SoftcapLinear

    w = getattr(layer, "weight", None)
    if (type(layer) not in (torch.nn.Linear, SoftcapLinear) or w.device.type != "cpu"
            or w.dtype != torch.float32
            or x.dtype != torch.float32 or not w.is_contiguous() or x.dim() != 2
            or x.shape[0] > HEAD_MAX_ROWS
            or torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
        return layer(x)
    kernel = decode_function("f32_linear")
    if kernel is None:
        return layer(x)
    x = x.contiguous()
    y = torch.empty(x.shape[0], layer.out_features)
    b = layer.bias
    kernel(x.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(),
           x.shape[0], layer.out_features, layer.in_features)
    cap = getattr(layer, "softcap", 0)
    return torch.tanh(y.div_(cap)).mul_(cap) if cap else y


# Rows up to which a block's projections in a PyTorch-path step go through ``f32_linear``
STEP_MAX_ROWS = 8


def step_linear(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for x (..., C); a one-token step's few rows (at most ``STEP_MAX_ROWS``,
    without autograd) through ``head_linear``'s C matvec: the families whose decode steps run
    in PyTorch (no native layer) stream their block weights at its speed, not at PyTorch's
    GEMM's (about 2x for a 1024 x 6144 projection at one row on a 2-core CPU)."""
    import torch

    rows = x.numel() // x.shape[-1]
    if rows > STEP_MAX_ROWS or torch.is_grad_enabled():
        return layer(x)
    return head_linear(layer, x.reshape(rows, x.shape[-1])).view(*x.shape[:-1], -1)


# Rows of x from which decode steps multiply float32 weights packed as panels
# (``csrc/decode.c``'s FMT_F32_PANELS): no horizontal sums, 1.5x the row-major tiles' speed at 8
# rows and 1.6x at 32; below 8 rows a step is a memory stream either way.
PANEL_MIN_ROWS = 8


def pack_panels(weight: torch.Tensor) -> torch.Tensor | None:
    """A float32 (N, K) weight as ``f32_panels`` packs it: (ceil(N / 32) * 32 * K,) floats;
    None without the native kernels."""
    import torch

    kernel = decode_function("f32_panels")
    if kernel is None:
        return None
    w = weight.detach().contiguous()
    n, k = w.shape
    out = torch.empty((n + 31) // 32 * 32 * k)
    kernel(w.data_ptr(), n, k, out.data_ptr())
    return out


def panel_linear(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None,
                 out_features: int) -> torch.Tensor:
    """``x @ W.T + bias`` for (B, K) float32 ``x`` and W packed by ``pack_panels``."""
    import torch

    x = x.contiguous()
    y = torch.empty(x.shape[0], out_features)
    decode_function("panel_linear")(x.data_ptr(), panels.data_ptr(),
                                    None if bias is None else bias.data_ptr(), y.data_ptr(),
                                    x.shape[0], out_features, x.shape[1])
    return y

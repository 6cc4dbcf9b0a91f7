"""The decode kernels on ARM (csrc/act8_neon.h, and the portable float code there): built with
Debian's aarch64 cross compiler (gcc-aarch64-linux-gnu) as a small program
(kernel_harness.c), run under qemu-user, once with the dotprod extension (ARMv8.2+: Apple
Silicon, Graviton 2+, Snapdragon X) and once without (ARMv8.0: Raspberry Pi 4). Every block
format, float32 and 8-bit activations, equals the same references as on x86
(test_gguf_linear.py) and this machine's own kernels; so does a whole Llama decode layer
(llama_layer: norms, RoPE, the cache, attention, SwiGLU). Skipped, with the reason, where the
cross compiler or qemu is missing (setup.sh installs both as root on Debian)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import QTYPES, blocks_of, rounded_reference
from scratchlm.nn.gguf_blocks import BLOCKS
from scratchlm.nn.gguf_linear import gguf_matmul
from scratchlm.nn.native import ACT8, CSRC, FORMATS, decode_function

pytest.importorskip("gguf")  # blocks_of quantizes with it

CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
ARCHES = {"dotprod": "armv8.2-a+dotprod", "armv8.0": "armv8-a"}


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    missing = [t for t in (CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install "
                    "gcc-aarch64-linux-gnu qemu-user)")
    out = tmp_path_factory.mktemp("neon")
    built = {}
    for name, arch in ARCHES.items():
        exe = out / f"harness-{name}"
        subprocess.run([CC, "-O3", f"-march={arch}", "-static", f"-I{CSRC}",
                        str(Path(__file__).parent / "kernel_harness.c"), "-o", str(exe), "-lm",
                        "-lpthread"], check=True, capture_output=True)
        built[name] = exe
    return built


def run_cases(exe: Path, cases: list, tmp: Path) -> list[torch.Tensor]:
    """y for each (fmt code, x, blocks, n) through the harness under qemu"""
    src, dst = tmp / "cases.bin", tmp / "ys.bin"
    with open(src, "wb") as f:
        for fmt, x, blocks, n in cases:
            raw = blocks.numpy().tobytes()
            f.write(np.array([0, fmt, x.shape[0], n, x.shape[1], len(raw)], np.int64).tobytes())
            f.write(x.numpy().astype(np.float32).tobytes())
            f.write(raw)
    subprocess.run([QEMU, str(exe), str(src), str(dst)], check=True, timeout=300)
    flat, ys, at = np.fromfile(dst, np.float32), [], 0
    for _, x, _, n in cases:
        ys.append(torch.from_numpy(flat[at:at + x.shape[0] * n].reshape(x.shape[0], n).copy()))
        at += x.shape[0] * n
    return ys


@pytest.mark.parametrize("arch", list(ARCHES))
def test_arm_kernels_equal_the_references_and_x86(arch, harnesses, tmp_path):
    exe = harnesses[arch]
    bits, max_rows = (int(v) for v in subprocess.run(
        [QEMU, str(exe)], check=True, capture_output=True, text=True).stdout.split())
    assert {q for q, code in FORMATS.items() if bits >> code & 1} == set(QTYPES)
    assert max_rows > 16  # every row of x takes the integer path on ARM
    rng = np.random.default_rng(6)
    cases, meta = [], []
    for qtype in QTYPES:
        unit = BLOCKS[qtype][1]
        for n, k in ((5, unit), (37, 2 * unit)):
            w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32)
            blocks, ref = blocks_of(w, qtype)
            for rows in (1, 5):
                x = torch.randn(rows, k) * 2
                x[0, :32] = 0  # a run of zeros: scale 0
                for act8 in (False, True):
                    cases.append((FORMATS[qtype] | (ACT8 if act8 else 0), x, blocks, n))
                    meta.append((qtype, act8, x, blocks, ref, n))
    ys = run_cases(exe, cases, tmp_path)
    x86 = decode_function("gguf_linear")
    for y, (qtype, act8, x, blocks, ref, n) in zip(ys, meta):
        scale = (x.abs().double() @ ref.abs().double().T).max()
        want = rounded_reference(x, blocks, qtype, n) if act8 else x.double() @ ref.double().T
        assert (y.double() - want).abs().max() <= 2e-6 * scale + 1e-6, (qtype, act8, x.shape)
        if x86 is not None:  # the same numbers as this machine's kernels (x86 with AVX2)
            here = gguf_matmul(x86, x, blocks, qtype, None, n, act8)
            assert (y.double() - here.double()).abs().max() <= 4e-6 * scale + 1e-6, qtype


LAYER = dict(B=3, C=256, H=4, KV=2, D=64, I=256, max_len=8, slot=5)


def layer_inputs(qtype: str, rng) -> dict:
    """One llama_layer step's inputs, every weight in ``qtype`` blocks"""
    d = LAYER
    shapes = {"qkv": ((d["H"] + 2 * d["KV"]) * d["D"], d["C"]), "o": (d["C"], d["H"] * d["D"]),
              "gate_up": (2 * d["I"], d["C"]), "down": (d["C"], d["I"])}
    weights = {k: blocks_of((rng.standard_normal(s) * 0.1).astype(np.float32), qtype)[0]
               for k, s in shapes.items()}
    cache = (d["B"], d["KV"], d["max_len"], d["D"])
    angles = rng.uniform(0, 6.3, (d["B"], d["D"] // 2)).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)
    return dict(weights=weights, x=rng.standard_normal((d["B"], d["C"])).astype(np.float32),
                n1=rng.uniform(0.5, 1.5, d["C"]).astype(np.float32),
                n2=rng.uniform(0.5, 1.5, d["C"]).astype(np.float32),
                cos=np.concatenate([cos, cos], 1), sin=np.concatenate([-sin, sin], 1),
                k=rng.standard_normal(cache).astype(np.float32),
                v=rng.standard_normal(cache).astype(np.float32),
                start=np.array([0, 2, 1], np.int64))


def layer_here(inp: dict, fmt: int) -> list[np.ndarray]:
    """The same step through this machine's llama_layer (ctypes)"""
    from scratchlm.nn.native import Weight

    d, kernel = LAYER, decode_function("llama_layer")
    x, k, v = inp["x"].copy(), inp["k"].copy(), inp["v"].copy()
    rows = {"qkv": (d["H"] + 2 * d["KV"]) * d["D"], "o": d["C"], "gate_up": 2 * d["I"],
            "down": d["C"]}
    ws = {}
    for name, blocks in inp["weights"].items():
        ws[name] = (Weight * 1)()
        ws[name][0].w, ws[name][0].rows, ws[name][0].fmt = blocks.data_ptr(), rows[name], fmt
    ptr = lambda a: a.ctypes.data  # noqa: E731
    kernel(ptr(x), d["B"], d["C"], d["H"], d["KV"], d["D"], d["I"], 1e-5, ptr(inp["n1"]),
           ws["qkv"], 1, ws["o"], ptr(inp["n2"]), ws["gate_up"], 1, ws["down"], ptr(inp["cos"]),
           ptr(inp["sin"]), ptr(k), ptr(v), d["max_len"], d["slot"], ptr(inp["start"]), None,
           None)
    return [x, k, v]


def layer_arm(exe: Path, cases: list, tmp: Path) -> list[list[np.ndarray]]:
    d = LAYER
    src, dst = tmp / "layers.bin", tmp / "layers.out"
    with open(src, "wb") as f:
        for inp, fmt in cases:
            raws = [inp["weights"][k].numpy().tobytes() for k in ("qkv", "o", "gate_up", "down")]
            f.write(np.array([1, fmt, d["B"], d["C"], d["H"], d["KV"], d["D"], d["I"],
                              d["max_len"], d["slot"], *map(len, raws)], np.int64).tobytes())
            f.write(np.float32(1e-5).tobytes())
            for key in ("x", "n1", "n2", "cos", "sin", "k", "v", "start"):
                f.write(np.ascontiguousarray(inp[key]).tobytes())
            for raw in raws:
                f.write(raw)
    subprocess.run([QEMU, str(exe), str(src), str(dst)], check=True, timeout=300)
    flat, out, at = np.fromfile(dst, np.float32), [], 0
    sizes = [inp["x"].size, inp["k"].size, inp["v"].size]
    for inp, _ in cases:
        parts = []
        for key, size in zip(("x", "k", "v"), sizes):
            parts.append(flat[at:at + size].reshape(inp[key].shape))
            at += size
        out.append(parts)
    return out


@pytest.mark.parametrize("arch", list(ARCHES))
def test_arm_decode_layer_equals_x86(arch, harnesses, tmp_path):
    """A whole Llama layer step on ARM (three rows, left padding, a cache of 5 slots) gives
    this machine's x and caches: float32 blocks within float32 summation; 8-bit activations
    within a few rounding steps (an activation within float32 rounding of a boundary rounds
    the other way when the norm or attention before it sums in another order: one such flip
    in SwiGLU's output moved x by 0.3% of its largest value in one of these cases; a wrong
    scale or offset moves it by tens of percent)."""
    if decode_function("llama_layer") is None:
        pytest.skip("no C compiler here")
    rng = np.random.default_rng(7)
    cases = [(layer_inputs(q, rng), FORMATS[q] | (ACT8 if a8 else 0))
             for q in ("Q8_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K") for a8 in (False, True)]
    arm = layer_arm(harnesses[arch], cases, tmp_path)
    for (inp, fmt), got in zip(cases, arm):
        want = layer_here(inp, fmt)
        tol = 1e-2 if fmt & ACT8 else 1e-5
        for g, w, name in zip(got, want, ("x", "k", "v")):
            assert np.abs(g - w).max() <= tol * np.abs(w).max(), (fmt, name)
        assert np.abs(want[0] - inp["x"]).max() > 0.01  # the layer did something
        assert not np.array_equal(want[1], inp["k"])  # and wrote the cache

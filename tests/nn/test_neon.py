"""The decode kernels on ARM (csrc/act8_neon.h, and the portable float code there): built with
Debian's aarch64 cross compiler (gcc-aarch64-linux-gnu) as a small program
(kernel_harness.c), run under qemu-user, once with the dotprod extension (ARMv8.2+: Apple
Silicon, Graviton 2+, Snapdragon X) and once without (ARMv8.0: Raspberry Pi 4). Every block
format, float32 and 8-bit activations, equals the same references as on x86
(test_gguf_linear.py) and this machine's own kernels. Skipped, with the reason, where the
cross compiler or qemu is missing (setup.sh installs both as root on Debian)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchlm.nn.gguf_blocks import BLOCKS
from scratchlm.nn.gguf_linear import gguf_matmul
from scratchlm.nn.native import ACT8, CSRC, FORMATS, decode_function

sys.path.insert(0, str(Path(__file__).parent))
from test_gguf_linear import QTYPES, blocks_of, rounded_reference  # noqa: E402

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
            f.write(np.array([fmt, x.shape[0], n, x.shape[1], len(raw)], np.int64).tobytes())
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

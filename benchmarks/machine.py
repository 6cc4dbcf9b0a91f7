"""The line every benchmark prints with its numbers: the CPU, its vector ISA as PyTorch sees it,
bf16 units, threads, and what gcc's ``-march=native`` means here."""

from __future__ import annotations

import subprocess


def isa() -> str:
    from scratchlm.training.runtime import cpu_summary

    try:
        out = subprocess.run(["gcc", "-march=native", "-Q", "--help=target"],
                             capture_output=True, text=True).stdout
        native = next((line.split()[-1] for line in out.splitlines()
                       if line.strip().startswith("-march=")), "?")
    except OSError:
        native = "? (no gcc)"
    return f"{cpu_summary()}; gcc -march=native {native}"

"""Every attention variant side by side (the book's chapter 3 bonus notebook, as a script).

    python benchmarks/attention.py [--device cpu|cuda] [--batch 8] [--tokens 1024]

Times forward and forward+backward of each multi-head variant with GPT-2-small's shape
(768 wide, 12 heads) and prints a table with the speed relative to the book's
MultiHeadAttention.
"""

from __future__ import annotations

import argparse
import time

import torch

from scratchlm.nn import attention as A


def bench(fn, device, repeat=5):
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()
    d, heads, t, dev = 768, 12, args.tokens, args.device
    torch.manual_seed(123)
    x = torch.randn(args.batch, t, d, device=dev)
    variants = {
        "MultiHeadAttentionWrapper": A.MultiHeadAttentionWrapper(d, d // heads, t, 0.0, heads),
        "MultiHeadAttention": A.MultiHeadAttention(d, d, t, 0.0, heads),
        "MHACombinedQKV": A.MHACombinedQKV(d, d, t, 0.0, heads),
        "MHAEinsum": A.MHAEinsum(d, d, t, 0.0, heads),
        "CausalSelfAttention (SDPA)": A.CausalSelfAttention(d, d, t, 0.0, heads),
    }
    print(f"device {dev}, batch {args.batch}, tokens {t}, d {d}, heads {heads}")
    print(f"{'variant':>28} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd speed':>10} {'f+b speed':>10}")
    rows = {}
    for name, mod in variants.items():
        mod = mod.to(dev)

        def fwd():
            with torch.no_grad():
                mod(x)

        def fwd_bwd():
            mod(x).sum().backward()

        rows[name] = (bench(fwd, dev), bench(fwd_bwd, dev))
        mod.zero_grad(set_to_none=True)
    ref_f, ref_b = rows["MultiHeadAttention"]
    for name, (f, b) in rows.items():
        print(f"{name:>28} {f:>9.1f} {b:>11.1f} {ref_f / f:>9.2f}x {ref_b / b:>9.2f}x")


if __name__ == "__main__":
    main()

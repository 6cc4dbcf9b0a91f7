"""Training-step throughput: our GPT vs transformers' GPT2LMHeadModel, same process, same config.

    python benchmarks/train_step.py [--steps 5] [--peak-gflops 140] [--device cpu|cuda]

One step = forward + cross-entropy + backward + AdamW. Prints tokens/s for each, the ratio
(goal >= 1.25 on CPU), and MFU against the given peak (this 2-core machine: ~140 GFLOP/s fp32).
On CUDA it runs gpt2-124m at context 1024 in bf16 autocast with torch.compile.
"""

from __future__ import annotations

import argparse
import time

import torch


def make_ours(cfg_kw, device, pad=1):
    from scratchlm.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(**cfg_kw, drop_rate=0.0, vocab_pad_multiple=pad)
    return GPT(cfg).to(device), cfg


def make_hf(cfg_kw, device):
    import transformers

    c = transformers.GPT2Config(
        vocab_size=cfg_kw["vocab_size"], n_positions=cfg_kw["context_length"],
        n_embd=cfg_kw["n_embd"], n_layer=cfg_kw["n_layer"], n_head=cfg_kw["n_head"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(c).to(device)


def ours_step(model, opt, x, y, autocast):
    from scratchlm.training.losses import causal_lm_loss

    with autocast():
        loss = causal_lm_loss(model, x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def hf_step(model, opt, x, y, autocast):
    with autocast():
        loss = model(input_ids=x, labels=x).loss  # HF shifts the labels itself
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def measure(step, model, opt, x, y, autocast, steps, warmup, device):
    for _ in range(warmup):
        step(model, opt, x, y, autocast)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x, y, autocast)
    if device == "cuda":
        torch.cuda.synchronize()
    return x.numel() * steps / (time.perf_counter() - t0)


def matmul_peak_gflops(device: str) -> float:
    """Measured fp32 (CPU) or bf16 (CUDA) matmul rate: the MFU denominator."""
    n = 4096 if device == "cuda" else 2048
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * 5 / (time.perf_counter() - t0) / 1e9)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternate peer/ours; keep each best")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--peak-gflops", type=float, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default="small,gpt2-124m")
    ap.add_argument("--compile", action="store_true", help="torch.compile ours (default on CUDA)")
    args = ap.parse_args()

    from contextlib import nullcontext

    from scratchlm.models.accounting import flops_per_token

    device = args.device
    cuda = device == "cuda"
    # MFU is against the published peak on CUDA (H100 SXM bf16 dense: 989 TFLOP/s) and against
    # a measured matmul rate on CPU (this machine's speed is not a published number).
    peak = args.peak_gflops or (989_000.0 if cuda else matmul_peak_gflops(device))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = nullcontext
    configs = {
        "small": (dict(vocab_size=50257, context_length=256, n_embd=384, n_layer=6, n_head=6), 8),
        "gpt2-124m": (dict(vocab_size=50257, context_length=1024 if cuda else 256, n_embd=768,
                           n_layer=12, n_head=12), 8 if cuda else 2),
    }
    print(f"device {device}, threads {torch.get_num_threads()}, peak {peak:.0f} GFLOP/s")
    print(f"{'config':>10} {'model':>12} {'tokens/s':>10} {'MFU':>7}")
    for name in args.configs.split(","):
        kw, batch = configs[name]
        torch.manual_seed(0)
        x = torch.randint(0, kw["vocab_size"], (batch, kw["context_length"]), device=device)
        y = torch.roll(x, -1, dims=1)

        hf = make_hf(kw, device)
        hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
        ours, cfg = make_ours(kw, device)
        opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=True)
        if args.compile or cuda:  # compile the transformer; the fused head+loss stays eager
            ours.hidden_states = torch.compile(ours.hidden_states)
        model = ours
        # This machine's speed drifts between runs: alternate the two and keep each one's best.
        hf_tps = our_tps = 0.0
        for _ in range(args.rounds):
            hf_tps = max(hf_tps, measure(hf_step, hf, hf_opt, x, y, autocast, args.steps,
                                         args.warmup, device))
            our_tps = max(our_tps, measure(ours_step, model, opt, x, y, autocast, args.steps,
                                           args.warmup, device))
        del hf, hf_opt, ours, opt, model

        train_flops = flops_per_token(cfg, kw["context_length"])[1]
        for label, tps in (("transformers", hf_tps), ("scratchlm", our_tps)):
            print(f"{name:>10} {label:>12} {tps:>10.1f} {tps * train_flops / peak / 1e9:>7.1%}")
        print(f"{name:>10} {'ratio':>12} {our_tps / hf_tps:>10.2f}  (goal >= 1.25)")


if __name__ == "__main__":
    main()

"""Pretraining loop overhead and the efficiency switches ("LLMs in Production" table 5.2).

    python benchmarks/pretrain.py [--steps 12]

1. End-to-end tokens/s of the pretrain recipe (data loading, metrics, progress included) vs
   the bare training step of benchmarks/train_step.py on the same model (goal >= 0.95).
2. One row per switch: tokens/s and peak memory, each run in its own process so peak RSS is
   its own. CPU here; on a GPU the same script measures the CUDA switches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

SHAPE = dict(n_layer=6, n_embd=384, n_head=6, context_length=256)
SWITCHES = {
    "baseline (fp32, fused head+loss)": {},
    "unfused head + cross-entropy": {"fused_loss": False},
    "activation checkpointing": {"grad_checkpointing": True},
    "batch 16 (vs 8)": {"batch_size": 16},
    "grad accumulation 2 x batch 4": {"batch_size": 4, "grad_accum_steps": 2},
    "SGD instead of AdamW": {"optimizer": "sgd"},
    "2 data workers": {"num_workers": 2},
    "torch.compile blocks": {"compile": True},
}


def run_recipe(steps: int, train_overrides: dict) -> dict:
    """Run the pretrain recipe; returns median step tokens/s (after warm-up) and peak MB."""
    from scratchlm.recipes.pretrain import PretrainConfig, main
    from scratchlm.training.loop import TrainConfig
    from scratchlm.training.metrics import MetricsLogger  # noqa: F401  (import cost outside)

    with tempfile.TemporaryDirectory() as d:
        train = TrainConfig(**{"max_steps": steps, "batch_size": 8, "log_every": 1,
                               "eval_every": 10**6, "save_every": 10**6, "warmup_steps": 2,
                               "eval_batches": 1, "tensorboard": False, **train_overrides})
        cfg = PretrainConfig(model="gpt2-124m", data=["tinyshakespeare"], out=d, sample_tokens=0,
                             drop_rate=0.0, **SHAPE, train=train)
        main(cfg)
        import csv

        with open(f"{d}/metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["tokens_per_s"]]
        tps = sorted(float(r["tokens_per_s"]) for r in rows[3:-1])  # skip warm-up and the last
        peak = max(float(r["peak_mem_mb"]) for r in rows)
    return {"tokens_per_s": tps[len(tps) // 2], "peak_mb": peak}


def bare_step_tps(steps: int) -> float:
    import torch

    from scratchlm.models.gpt import GPT, GPTConfig
    from scratchlm.training.losses import causal_lm_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, drop_rate=0.0, **SHAPE))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, 50257, (8, SHAPE["context_length"]))
    y = torch.roll(x, -1, 1)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        causal_lm_loss(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    times = sorted(times[3:-1])
    return x.numel() / times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one switch
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(run_recipe(args.steps, json.loads(args.one))))
        return

    def child(overrides: dict) -> dict:
        r = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one",
                            json.dumps(overrides)], capture_output=True, text=True)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(r.stderr[-2000:])
        return json.loads(line[7:])

    # Alternate the two measurements (this machine's speed drifts) and keep each one's best.
    bare, recipe = 0.0, 0.0
    for _ in range(2):
        bare = max(bare, bare_step_tps(args.steps))
        recipe = max(recipe, child({})["tokens_per_s"])
    print(f"model {SHAPE}, batch 8, fp32 CPU")
    print(f"bare train step      {bare:8.1f} tokens/s")
    print(f"pretrain recipe      {recipe:8.1f} tokens/s   ratio {recipe / bare:.3f} (goal >= 0.95)")
    print()
    print(f"{'switch':<36} {'tokens/s':>9} {'vs base':>8} {'peak MB':>9}")
    base = None
    for name, overrides in SWITCHES.items():
        r = child(overrides)
        base = base or r
        print(f"{name:<36} {r['tokens_per_s']:>9.1f} {r['tokens_per_s'] / base['tokens_per_s']:>7.2f}x "
              f"{r['peak_mb']:>9.0f}")


if __name__ == "__main__":
    main()

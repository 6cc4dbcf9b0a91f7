"""Muon against AdamW at equal tokens: steps to reach AdamW's final validation loss, and the
step-time cost of the orthogonalisation.

    python benchmarks/muon.py [--steps 300] [--quick]

A Llama-shaped model (6 layers, 192 wide, context 128) pretrains on tinyshakespeare with a
2,048-token BPE trained on it, batch 16, the same cosine schedule and seed for both optimizers.
Each optimizer's rate comes from a small sweep (AdamW: lr; Muon: the matrices' muon_lr, its
AdamW groups at the best AdamW lr); the best final validation loss of each is compared. Then one
process times alternating steps of the two on the same model (the ratio, not the times).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from machine import isa

SHAPE = dict(model="llama-tiny", n_layer=6, n_embd=192, n_head=6, context_length=128)


def train_bpe_file(folder: Path) -> str:
    from scratchlm.recipes.train_tokenizer import TrainTokenizerConfig, main

    path = folder / "bpe.json"
    main(TrainTokenizerConfig(data=["tinyshakespeare"], vocab_size=2048, out=str(path)))
    return str(path)


def run(tokenizer: str, steps: int, out: Path, **train) -> list[tuple[int, float]]:
    """(step, validation loss) of one run."""
    from scratchlm.recipes.pretrain import PretrainConfig, main
    from scratchlm.training.loop import TrainConfig

    cfg = PretrainConfig(
        **SHAPE, data=["tinyshakespeare"], tokenizer=tokenizer, out=str(out), sample_tokens=0,
        train=TrainConfig(max_steps=steps, batch_size=16, warmup_steps=steps // 15,
                          eval_every=max(1, steps // 12), eval_batches=16, log_every=10,
                          save_every=10**6, tensorboard=False, **train))
    main(cfg)
    with open(out / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f)
                if r.get("val_loss")]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first step at which the validation loss is <= target (linear between evaluations)."""
    prev = None
    for step, loss in curve:
        if loss <= target:
            if prev is None:
                return float(step)
            (s0, l0) = prev
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        prev = (step, loss)
    return None


def step_time_ratio(tokenizer: str, rounds: int = 6, steps: int = 5) -> float:
    """Muon's step time over AdamW's on the benchmark's model, alternating in one process."""
    import torch

    from scratchlm.models.registry import build_model, preset
    from scratchlm.tokenizers import get_tokenizer
    from scratchlm.training.losses import causal_lm_loss
    from scratchlm.training.optim import build_optimizer

    vocab = get_tokenizer(tokenizer).vocab_size
    family, _ = preset(SHAPE["model"])
    shape = {k: v for k, v in SHAPE.items() if k != "model"}
    model = build_model(family.config_cls.from_name(SHAPE["model"], vocab_size=vocab, **shape))
    opts = {"adamw": build_optimizer(model, "adamw", lr=1e-4),
            "muon": build_optimizer(model, "muon", lr=1e-4, muon_lr=1e-3)}
    x = torch.randint(0, vocab, (16, 128))
    times = {k: [] for k in opts}
    for _ in range(rounds):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                causal_lm_loss(model, x[:, :-1], x[:, 1:]).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return med["muon"] / med["adamw"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--adamw-lrs", default="1e-3,2e-3,4e-3")
    ap.add_argument("--muon-lrs", default="0.01,0.02,0.04")
    ap.add_argument("--quick", action="store_true", help="one rate each, 30 steps (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.adamw_lrs, args.muon_lrs = 30, "2e-3", "0.02"
    print(f"ISA: {isa()}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        tok = train_bpe_file(d)
        adamw = {}
        for lr in map(float, args.adamw_lrs.split(",")):
            adamw[lr] = run(tok, args.steps, d / f"adamw-{lr}", lr=lr)
            print(f"adamw lr {lr}: final val loss {adamw[lr][-1][1]:.4f}", flush=True)
        best_lr = min(adamw, key=lambda k: adamw[k][-1][1])
        muon = {}
        for mlr in map(float, args.muon_lrs.split(",")):
            muon[mlr] = run(tok, args.steps, d / f"muon-{mlr}", lr=best_lr, optimizer="muon",
                            muon_lr=mlr)
            print(f"muon muon_lr {mlr} (AdamW groups lr {best_lr}): final val loss "
                  f"{muon[mlr][-1][1]:.4f}", flush=True)
        best_mlr = min(muon, key=lambda k: muon[k][-1][1])
        target = adamw[best_lr][-1][1]
        reach = steps_to_reach(muon[best_mlr], target)
        ratio = step_time_ratio(tok)
    result = {
        "isa": isa(), "steps": args.steps, "adamw_best_lr": best_lr, "muon_best_lr": best_mlr,
        "adamw_final_val": target, "muon_final_val": muon[best_mlr][-1][1],
        "muon_steps_to_adamw_final": reach,
        "steps_ratio": None if reach is None else reach / args.steps,
        "muon_step_time_over_adamw": ratio,
        "curves": {"adamw": adamw[best_lr], "muon": muon[best_mlr]},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=2))
    print(f"| | AdamW (lr {best_lr}) | Muon (muon_lr {best_mlr}) |")
    print("|---|---|---|")
    for (s, a), (_, m) in zip(adamw[best_lr], muon[best_mlr]):
        print(f"| step {s} | {a:.4f} | {m:.4f} |")
    print(f"steps to AdamW's final validation loss: "
          f"{'not reached' if reach is None else f'{reach:.0f} of {args.steps}'} "
          f"(ratio {result['steps_ratio'] if reach else '-'}; goal <= 0.8); "
          f"Muon step time / AdamW's: {ratio:.2f}x")


if __name__ == "__main__":
    main()

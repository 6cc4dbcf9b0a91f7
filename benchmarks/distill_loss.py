"""One distillation training step: the loss fused with both heads vs materialised logits.

    python benchmarks/distill_loss.py [--rounds 2] [--batch 16] [--seq 128]

A 12-layer, 128-wide GPT teacher (GPT-2 vocabulary) and a 6-layer student made from it; a
step = teacher forward + student forward/backward + AdamW. "plain" computes both models'
(B*T, V) logits and ``finetune/distill.distillation_loss``; "fused" is
``nn/loss.linear_distillation_loss`` (chunks of 256 rows). Rounds alternate and keep each
one's best, because this machine's speed drifts. Prints seconds per step and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from scratchlm.finetune.distill import DistillationLoss, student_from_teacher
from scratchlm.models.gpt import GPT, GPTConfig


def step_time(loss_module, opt, x, steps: int = 3) -> float:
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        loss_module(x, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=50257, context_length=args.seq, n_embd=128, n_head=4,
                            n_layer=12))
    student = student_from_teacher(teacher, 6).train()
    x = torch.randint(0, 50257, (args.batch, args.seq))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    best = {"plain": float("inf"), "fused": float("inf")}
    for _ in range(args.rounds):
        for name in best:
            loss = DistillationLoss(student, teacher, 0.5, 2.0, fused=name == "fused")
            best[name] = min(best[name], step_time(loss, opt, x))
    print(f"plain {best['plain']:.3f} s/step | fused {best['fused']:.3f} s/step | "
          f"fused/plain {best['fused'] / best['plain']:.2f}")


if __name__ == "__main__":
    main()

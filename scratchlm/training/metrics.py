"""Run metrics a person can follow while training runs: ``metrics.csv`` (one row per log or
eval step, flushed at once), TensorBoard events under ``tb/``."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu",
           "peak_mem_mb", "val_loss", "val_ppl", "train_eval_loss", "moe_aux_loss",
           "expert_dropped_frac", "expert_share",
           # reinforcement learning (GRPO): per step, and the held-out accuracy per eval
           "reward", "reward_std", "accuracy", "heldout_accuracy", "heldout_reward", "kl",
           "clip_frac", "entropy", "response_len", "truncated_frac", "zero_variance_frac", "rollout_s",
           "score_s", "rollout_pass"]


class MetricsLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step is not None and self.path.is_file():
            # Rows logged after the checkpoint we resume from will be logged again.
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)
            except ImportError:  # tensorboard not installed: CSV only
                self.writer = None

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}")
        # A list (one value per expert) is one space-separated cell, one TensorBoard curve each.
        row = {k: " ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else v
               for k, v in values.items()}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({"step": step, **row})
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, list):
                    for i, x in enumerate(v):
                        self.writer.add_scalar(f"{k}/{i}", x, step)
                elif v is not None and k != "tokens":
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def read(self) -> list[dict]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

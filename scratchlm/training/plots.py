"""Loss curves as PNG: the book's plot with steps below and tokens seen on a second axis."""

from __future__ import annotations

import os
from pathlib import Path


def _save(fig, path: str | Path) -> Path:
    """Write the figure under a temporary name, then rename: a reader never sees half a PNG."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_losses(rows: list[dict], path: str | Path, title: str = "Loss",
                unit: str = "tokens") -> Path | None:
    """Train loss (every logged step) and validation loss (every eval) from metrics rows;
    the top axis counts ``unit`` seen (tokens, or a loss's examples or pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(int(r["step"]), float(r["loss"]), int(r["tokens"] or 0)) for r in rows if r.get("loss")]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot([s for s, _, _ in train], [v for _, v, _ in train], label="Training loss")
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], linestyle="-.", marker="o",
                markersize=3, label="Validation loss")
    ax.set_xlabel("Steps")
    ax.set_ylabel("Loss")
    ax.set_title(title)
    lines, labels = ax.get_legend_handles_labels()
    lr = [(int(r["step"]), float(r["lr"])) for r in rows if r.get("lr")]
    if lr and max(v for _, v in lr) > min(v for _, v in lr) * (1 + 1e-6):
        # the learning rate on its own faint axis (warm-up, decay, a temporary lr_scale); a
        # constant rate would only add an axis of noise
        ax2 = ax.twinx()
        (line,) = ax2.plot([s for s, _ in lr], [v for _, v in lr], color="0.6", linewidth=1,
                           linestyle=":")
        ax2.set_ylabel("Learning rate", color="0.4")
        ax2.tick_params(axis="y", labelsize=7, colors="0.4")
        lines, labels = lines + [line], labels + ["Learning rate"]
    # below the plot, where it covers no curve
    ax.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3,
              frameon=False, fontsize=8)
    if train and train[-1][0] > 0:
        # A second x-axis for tokens seen, aligned to steps by the logged pairs.
        steps = [s for s, _, _ in train]
        tokens = [t for _, _, t in train]
        per_step = tokens[-1] / max(1, steps[-1])
        top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step,
                                                   lambda t: t / max(per_step, 1e-9)))
        top.set_xlabel(f"{unit.capitalize()} seen")
    return _save(fig, path)


def plot_series(rows: list[dict], keys: list[str], path: str | Path, title: str,
                ylabel: str) -> Path | None:
    """Some metrics columns against the step (e.g. GRPO's reward and accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k)] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, points in series.items():
        ax.plot([s for s, _ in points], [v for _, v in points], label=k,
                marker="o" if len(points) < 20 else None, markersize=3)
    ax.set_xlabel("Steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    return _save(fig, path)


def plot_accuracy(history: list[dict], path: str | Path, train_label: str = "training",
                  val_label: str = "validation") -> Path | None:
    """A classifier's accuracy at each evaluation (``epoch``, ``train_acc``, ``val_acc``
    rows), with markers so one evaluation still shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["train_acc"] for h in history], marker="o", markersize=4,
            label=f"Accuracy, {train_label}")
    ax.plot(epochs, [h["val_acc"] for h in history], linestyle="-.", marker="s", markersize=4,
            label=f"Accuracy, {val_label}")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, max(epochs) * 1.05)
    ax.set_title("Classification accuracy")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
              fontsize=8)
    return _save(fig, path)

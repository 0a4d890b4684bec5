"""Figure for docs/08-training.md: loss parts, learning rate and validation/test mAP of the default run.

Drawn from the metrics log of the default run (``python -m minissd.train``), committed as
benchmarks/train_default_metrics.jsonl so the figure can be remade without retraining. Point
MINISSD_RUN at a run directory to draw that run instead.

The test split is evaluated once, at the last iteration, where the last validation point also sits;
the two are drawn with different markers (validation: small dots on a line; test: a large hollow
star around its point) and their values are written in the legend, so neither hides the other.

    python scripts/make_figures.py --only training
"""
import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_LOG = os.path.join(ROOT, "benchmarks", "train_default_metrics.jsonl")
TITLE = "python -m minissd.train (small model, shapes, 2 CPU cores)"


def smooth(values, window):
    """Running mean over ``window`` records (the first ones averaged over what there is)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) < window:
        return values
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, np.ones(window) / window, mode="valid")])


def draw(records, path, title=TITLE):
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "map" in r]
    fig, (ax_loss, ax_lr, ax_map) = plt.subplots(1, 3, figsize=(11.0, 3.7))
    if train:
        it = np.array([r["iteration"] for r in train])
        window = max(1, len(train) // 25)
        for key, color in (("loss", "black"), ("conf", "tab:red"), ("loc", "tab:blue")):
            values = np.array([r[key] for r in train], dtype=np.float64)
            ax_loss.plot(it, values, color=color, alpha=0.2, linewidth=0.8)
            ax_loss.plot(it, smooth(values, window), color=color, label=key)
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
        ax_lr.plot(it, [r["lr"] for r in train], color="tab:green")
    ax_loss.set_title("training loss (light: per record)", fontsize=10)
    ax_lr.set_title("learning rate", fontsize=10)
    style = {"val": dict(marker="o", markersize=4, linestyle="-", color="tab:blue", zorder=2),
             "test": dict(marker="*", markersize=16, linestyle="none", markerfacecolor="none",
                          markeredgewidth=1.5, color="tab:red", zorder=3)}
    for split in sorted({r.get("split", "val") for r in evals}, key=lambda s: s != "val"):
        pts = [r for r in evals if r.get("split", "val") == split]
        x = [r["iteration"] for r in pts]
        y = [r["map"] for r in pts]
        label = f"{split} mAP@0.5 (last {y[-1]:.3f} at {x[-1]})"
        ax_map.plot(x, y, label=label, **style.get(split, dict(marker="s", linestyle="--")))
    if evals:
        ax_map.legend(fontsize=8, loc="lower right")
    last = max([r["iteration"] for r in train + evals] or [1])
    ax_map.set_xlim(0, last * 1.05)
    ax_map.set_ylim(0, 1)
    ax_map.grid(alpha=0.3)
    ax_map.set_title("VOC mAP@0.5 (11-point)", fontsize=10)
    for ax in (ax_loss, ax_lr, ax_map):
        ax.set_xlabel("iteration")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(outdir):
    run = os.environ.get("MINISSD_RUN")
    log = os.path.join(run, "metrics.jsonl") if run else DEFAULT_LOG
    if not os.path.exists(log):
        print(f"fig_training: {log} not found; run python -m minissd.train first")
        return []
    with open(log, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [draw(records, os.path.join(outdir, "training_curves.png"))]


if __name__ == "__main__":
    print(main(os.path.join(ROOT, "docs", "figures")))

"""Figure for docs/10-evaluation.md: precision/recall curves of the trained model and the two kinds of VOC AP.

The trained small model (`_trained.trained_model`: a given run, or the cached figure run) detects the
500 shapes test images with the paper's post-processing (`minissd.inference.predict`), and
`minissd.metrics.evaluate_detections` ranks its detections per class and scores them at IoU 0.5.
Left: precision against recall per class. Right: the class with the lowest AP in detail: the raw
curve, its envelope (whose area is the VOC2010+ AP) and the 11 points at recall 0, 0.1, ..., 1
whose mean is the VOC2007 AP.

    python scripts/make_figures.py --only pr_curve [--run RUN_DIR]
"""
import os
import sys

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def evaluate_trained(model, split="test"):
    """``(class_names, evaluate_detections result, number of images)`` of ``model`` on shapes ``split``."""
    from _trained import shapes_predictions

    from minissd.data import ShapesDataset
    from minissd.metrics import evaluate_detections

    pred = shapes_predictions(model, split)
    names = ShapesDataset.class_names
    return names, evaluate_detections(pred["detections"], pred["ground_truths"], len(names)), len(pred["detections"])


def main(outdir, run=None):
    from _trained import run_label, save_png, trained_model

    model, meta, run_dir = trained_model(run)
    class_names, r, n_images = evaluate_trained(model)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = ("#e6194b", "#3cb44b", "#4363d8", "#f58231")
    fig = Figure(figsize=(11, 4.9), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(f"VOC AP@0.5 of the trained model on the {n_images} shapes test images "
                 f"({run_label(meta, run_dir)})", fontsize=10)

    ax = fig.add_subplot(1, 2, 1)
    for label, name in enumerate(class_names, 1):
        ax.plot(r["recall"][label], r["precision"][label], color=colors[(label - 1) % 4], lw=1.5,
                label=f"{name}: AP07 {r['ap_07'][label]:.3f}, area {r['ap_area'][label]:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"per-class PR curves, mAP07 {r['map_07']:.3f}, mAP area {r['map_area']:.3f}", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)

    # One class in detail: raw curve, envelope (area AP), 11 sampled points (VOC2007 AP).
    label = min(range(1, len(class_names) + 1), key=lambda k: r["ap_07"][k])   # the weakest class
    color = colors[(label - 1) % 4]
    rec, prec = r["recall"][label], r["precision"][label]
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
    ax = fig.add_subplot(1, 2, 2)
    ax.fill_between(mrec, mpre, step="pre", color=color, alpha=0.15,
                    label=f"area under the envelope = {r['ap_area'][label]:.3f}")
    ax.step(mrec, mpre, where="pre", color=color, lw=1.5, label="envelope: best precision at recall >= r")
    ax.plot(rec, prec, color="0.5", lw=0.8, label="raw precision after each rank")
    t = np.arange(11) / 10
    p11 = [prec[rec >= x].max() if np.any(rec >= x) else 0.0 for x in t]
    ax.vlines(t, 0, p11, color="k", lw=0.6, ls=":")
    ax.plot(t, p11, "o", color="k", ms=5,
            label=f"11 points: best precision at recall >= 0, 0.1, ..., 1; mean = {r['ap_07'][label]:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"the weakest class, '{class_names[label - 1]}': 11-point (VOC2007) vs area (VOC2010+) AP",
                 fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "pr_curve.png")
    save_png(fig, path, dpi=100)
    return [path]


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures", sys.argv[2] if len(sys.argv) > 2 else None))

"""Figure for docs/10-evaluation.md: precision/recall curves and the two kinds of VOC AP.

The detections come from a simulated detector on the shapes test split, so the figure does not need a
trained model: each object is found with probability 0.85 (a box jittered by a few pixels, a score that
is higher for larger objects), some objects get a second, lower-scored duplicate, and every image gets
a few false alarms at random places with lower scores. `minissd.metrics.evaluate_detections` scores
them exactly as it scores a real model.

    python scripts/make_figures.py --only pr_curve
"""
import os

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def simulated_detections(samples, num_classes, rng, find_rate=0.85):
    """Per image (boxes, labels, scores) from a noisy stand-in detector; ``samples`` have boxes/labels."""
    dets = []
    for s in samples:
        h, w = s.image.shape[:2]
        boxes, labels, scores = [], [], []
        for b, lab in zip(np.asarray(s.boxes, float), s.labels):
            size = np.sqrt((b[2] - b[0]) * (b[3] - b[1]))
            if rng.random() < find_rate:
                boxes.append(b + rng.normal(0, 0.06 * size, 4))
                labels.append(lab)
                scores.append(1 / (1 + np.exp(-(size / 12 - 1.2 + rng.normal(0, 1.0)))))
                if rng.random() < 0.15:    # a duplicate that NMS let through
                    boxes.append(b + rng.normal(0, 0.12 * size, 4))
                    labels.append(lab)
                    scores.append(scores[-1] * rng.uniform(0.3, 0.9))
        for _ in range(rng.poisson(2.0)):  # false alarms on the background clutter
            cx, cy, side = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 40)
            boxes.append([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
            labels.append(rng.integers(1, num_classes + 1))
            scores.append(rng.uniform(0.02, 0.6) ** 1.5)
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        dets.append((boxes, np.asarray(labels, np.int64), np.clip(np.asarray(scores, float), 0, 1)))
    return dets


def evaluate_simulated(num_images=60, seed=0):
    from minissd.data import ShapesDataset
    from minissd.metrics import evaluate_detections

    ds = ShapesDataset("test")
    samples = [ds.get(i) for i in range(min(num_images, len(ds)))]
    dets = simulated_detections(samples, len(ds.class_names), np.random.default_rng(seed))
    return ds.class_names, evaluate_detections(dets, samples, len(ds.class_names))


def main(outdir):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class_names, r = evaluate_simulated()
    colors = ("#e6194b", "#3cb44b", "#4363d8", "#f58231")
    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)

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
    label = 1
    rec, prec = r["recall"][label], r["precision"][label]
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
    ax = fig.add_subplot(1, 2, 2)
    ax.fill_between(mrec, mpre, step="pre", color=colors[0], alpha=0.15,
                    label=f"area under the envelope = {r['ap_area'][label]:.3f}")
    ax.step(mrec, mpre, where="pre", color=colors[0], lw=1.5, label="envelope: best precision at recall >= r")
    ax.plot(rec, prec, color="0.5", lw=0.8, label="raw precision after each rank")
    t = np.arange(11) / 10
    p11 = [prec[rec >= x].max() if np.any(rec >= x) else 0.0 for x in t]
    ax.plot(t, p11, "o", color="k", ms=5, label=f"11 points, mean = {r['ap_07'][label]:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"'{class_names[label - 1]}': 11-point (VOC2007) vs area (VOC2010+) AP", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "pr_curve.png")
    fig.savefig(path)
    return [path]


if __name__ == "__main__":
    import sys

    print(main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures"))

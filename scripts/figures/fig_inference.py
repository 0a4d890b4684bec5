"""Figure for docs/09-inference-and-nms.md: per-class NMS on one shapes image, before and after.

The candidates come from a stand-in detector, not a trained network (a fresh clone has no trained
checkpoint): around every object, default-box-like jittered copies of its box with scores that fall
with their distance from it, plus low-scoring clutter, all of the object's class. That is what the
score map of a trained SSD looks like near an object. `minissd.boxes.nms` then runs per class at the
paper's 0.45.

    python scripts/make_figures.py --only inference
"""
import os

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def _candidates(sample, rng):
    boxes, labels, scores = [], [], []
    h, w = sample.image.shape[:2]
    for box, label in zip(sample.boxes, sample.labels):
        bw, bh = box[2] - box[0], box[3] - box[1]
        for _ in range(40):
            jitter = rng.normal(0, 0.12, 4) * np.array([bw, bh, bw, bh])
            b = box + jitter
            if b[2] - b[0] < 2 or b[3] - b[1] < 2:
                continue
            boxes.append(b)
            labels.append(label)
            scores.append(float(np.exp(-np.abs(jitter).sum() / (0.25 * (bw + bh)))))
    for _ in range(30):   # clutter: small boxes anywhere, low scores, random class
        cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 30)
        boxes.append(np.array([cx - s, cy - s, cx + s, cy + s]))
        labels.append(int(rng.integers(1, 5)))
        scores.append(float(rng.uniform(0.01, 0.25)))
    return np.array(boxes, np.float64), np.array(labels, np.int64), np.array(scores)


def main(outdir):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from minissd.boxes import nms
    from minissd.data import ShapesDataset
    from minissd.viz import show_detections

    rng = np.random.default_rng(7)
    ds = ShapesDataset("test")
    sample = ds.get(3)
    boxes, labels, scores = _candidates(sample, rng)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.extend(idx[nms(boxes[idx], scores[idx], 0.45)].tolist())
    keep = np.array(sorted(keep, key=lambda i: -scores[i]))
    keep = keep[scores[keep] >= 0.3]

    fig = Figure(figsize=(9, 4.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = ds.class_names
    show_detections(ax1, sample.image, boxes, labels, None, names,
                    title=f"{len(boxes)} candidates (score > 0.01)")
    for patch in ax1.patches:
        patch.set_linewidth(0.6)
    for text in list(ax1.texts):   # 230 labels would hide the picture; colour gives the class
        text.remove()
    show_detections(ax2, sample.image, boxes[keep], labels[keep], scores[keep], names,
                    gt_boxes_xyxy=sample.boxes,
                    title=f"per-class NMS at IoU 0.45, score >= 0.3: {len(keep)} left")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.04)
    path = os.path.join(outdir, "inference_nms.png")
    fig.savefig(path, dpi=100)
    return [path]


if __name__ == "__main__":
    print(main(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "figures")))

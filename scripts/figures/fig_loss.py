"""Figure for docs/06-loss.md: which default boxes hard negative mining keeps on one image.

A shapes image, the small model's 1524 default boxes (minissd.priors.make_priors("small")) matched to
its objects, and confidence scores from a stand-in detector: a box looks like an object in proportion
to the contrast of the pixels under it and to its overlap with a real object (an untrained network
scores at random, which would make a dull picture). MultiBoxLoss then mines the negatives. Left: the
image with positives and mined negatives. Right: the background loss of every negative, sorted, and
the 3:1 cut.

    python scripts/make_figures.py --only loss
"""
import os

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def _match(priors_cxcywh, gt_xyxy, gt_labels):
    try:   # the NumPy twin of the matching kernel: the same answer, no compiled code needed
        from minissd.boxes.reference import match_ref

        labels, _ = match_ref(priors_cxcywh, gt_xyxy, gt_labels, threshold=0.5)
        return np.asarray(labels)
    except ImportError:   # plain IoU >= 0.5 rule
        iou = _iou(_xyxy(priors_cxcywh), gt_xyxy)
        best = iou.argmax(1)
        return np.where(iou.max(1) >= 0.5, gt_labels[best], 0)


def _xyxy(cxcywh):
    return np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)


def _iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def scene(index=16, seed=0):
    """(image, gt_xyxy normalised, gt_labels, priors_cxcywh, labels, conf (1, P, M)) for the figure."""
    from minissd.data import ShapesDataset
    from minissd.priors import make_priors

    ds = ShapesDataset("val")
    s = ds.get(index)
    h, w = s.image.shape[:2]
    gt = s.boxes.astype(np.float64) / np.array([w, h, w, h])
    priors = np.asarray(make_priors("small"), dtype=np.float64)
    labels = _match(priors, gt, s.labels)
    # Stand-in detector: "objectness" from local contrast and from overlap with a real object.
    gray = s.image.astype(np.float64).mean(axis=2) / 255.0
    boxes_px = np.clip(_xyxy(priors), 0, 1) * np.array([w, h, w, h])
    contrast = np.zeros(len(priors))
    for i, (x1, y1, x2, y2) in enumerate(boxes_px.round().astype(int)):
        patch = gray[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
        contrast[i] = patch.std()
    overlap = _iou(_xyxy(priors), gt).max(axis=1)
    rng = np.random.default_rng(seed)
    objectness = 6.0 * contrast + 3.0 * overlap + 0.3 * rng.standard_normal(len(priors)) - 2.0
    m = len(ds.class_names) + 1
    conf = np.zeros((1, len(priors), m))
    conf[0, :, 1:] = objectness[:, None] - np.log(m - 1)   # object mass split evenly over the classes
    return s.image, gt, s.labels, priors, labels, conf


def main(outdir):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from minissd.loss import MultiBoxLoss, log_softmax

    image, gt, gt_labels, priors, labels, conf = scene()
    p = len(priors)
    loss = MultiBoxLoss()
    zeros = np.zeros((1, p, 4))
    parts = loss.forward(zeros, conf, zeros, labels[None].astype(np.int64))
    pos, neg = loss.pos_mask[0], loss.neg_mask[0]
    bg = -log_softmax(conf)[0, :, 0]

    fig = Figure(figsize=(11, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    h, w = image.shape[:2]
    ax.imshow(image)
    px = _xyxy(priors) * np.array([w, h, w, h])

    def draw(idx, color, lw, ls="-"):
        for x1, y1, x2, y2 in px[idx]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=lw, ls=ls))

    draw(np.flatnonzero(neg), "#e6194b", 0.9, "--")
    draw(np.flatnonzero(pos), "#3cb44b", 1.3)
    for x1, y1, x2, y2 in gt * np.array([w, h, w, h]):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=2))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(f"{int(pos.sum())} positives (green), {int(neg.sum())} mined negatives (red)\n"
                 f"of {p} default boxes; objects in white", fontsize=10)
    ax.axis("off")

    ax = fig.add_subplot(1, 2, 2)
    negatives = np.flatnonzero(~pos)
    order = negatives[np.argsort(-bg[negatives], kind="stable")]
    k = int(neg.sum())
    ax.plot(np.arange(1, k + 1), bg[order[:k]], color="#e6194b", lw=2, label=f"mined: top {k} = 3 x {int(pos.sum())}")
    ax.plot(np.arange(k + 1, len(order) + 1), bg[order[k:]], color="0.6", lw=2,
            label=f"left out: {len(order) - k} easy negatives")
    ax.set_xscale("log")
    ax.set_xlabel("negatives, hardest first (log scale)")
    ax.set_ylabel(r"background loss $-\log \hat{c}_i^0$")
    ax.set_title(f"hard negative mining, 3:1 (L_conf = {parts.conf:.2f} per positive)", fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "loss_mined_negatives.png")
    fig.savefig(path)
    return [path]


if __name__ == "__main__":
    import sys

    print(main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures"))

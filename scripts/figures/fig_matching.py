"""Figure for docs/03-matching-and-encoding.md: the default boxes matched to ground-truth boxes.

Left: every default box of the small model (128 px, 1524 boxes) with IoU > 0.2 against one object,
coloured by that IoU. Right: the result of `match` for all objects of the image: the positive default
boxes (IoU >= 0.5, or the bipartite pairing) drawn in their object's class colour; a thin object whose
best default box has IoU < 0.5 still gets one (the bipartite step).

    python scripts/make_figures.py --only matching
"""
import os

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def main(outdir):
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from minissd.boxes import cxcywh_to_xyxy, iou, match
    from minissd.data import ShapesDataset
    from minissd.priors import make_priors
    from minissd.viz import class_color

    sample = ShapesDataset("test").get(3)
    S = sample.image.shape[1]
    gt = sample.boxes / S                                              # normalised xyxy
    # a thin extra object (a 4 x 40 px bar): no default box reaches IoU 0.5 with it
    thin = np.array([[0.40, 0.03, 0.43, 0.34]])
    gt_all = np.concatenate([gt, thin])
    labels_all = np.concatenate([sample.labels, [3]])
    priors = make_priors("small")
    priors_xyxy = cxcywh_to_xyxy(priors)
    ov = iou(priors_xyxy, gt_all)                                      # (P, G)
    labels, matched = match(priors, gt_all, labels_all)

    fig = Figure(figsize=(10, 5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    cmap, norm = colormaps["viridis"], Normalize(0.2, 1.0)
    j = 0
    order = np.argsort(ov[:, j])
    for p in order[ov[order, j] > 0.2]:
        b = priors_xyxy[p] * S
        ax1.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                edgecolor=cmap(norm(ov[p, j])), lw=0.6 + 2 * (ov[p, j] >= 0.5)))
    b = gt_all[j] * S
    ax1.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor="white", lw=1.5,
                            ls="--"))
    n_pos = int((ov[:, j] >= 0.5).sum())
    ax1.set_title(f"IoU of each default box with one object\n({int((ov[:, j] > 0.2).sum())} boxes > 0.2, "
                  f"{n_pos} >= 0.5: thick)", fontsize=10)
    fig.colorbar(cmap_mappable(cmap, norm), ax=ax1, fraction=0.046, pad=0.02, label="IoU")

    for p in np.flatnonzero(labels):
        b = priors_xyxy[p] * S
        ax2.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                edgecolor=class_color(int(labels[p])), lw=1.0))
    for b in gt_all * S:
        ax2.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor="white",
                                lw=1.5, ls="--"))
    thin_best = float(ov[:, -1].max())
    ax2.set_title(f"match(): {int((labels > 0).sum())} positives of {len(priors)}\n"
                  f"(the thin bar's best IoU is {thin_best:.2f} < 0.5; bipartite pairing gives it one)",
                  fontsize=10)
    for ax in (ax1, ax2):
        ax.imshow(sample.image, alpha=0.55)
        ax.set_xlim(-10, S + 10)
        ax.set_ylim(S + 10, -10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.02, top=0.88, wspace=0.08)
    path = os.path.join(outdir, "matching.png")
    fig.savefig(path, dpi=100)
    return [path]


def cmap_mappable(cmap, norm):
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    return sm


if __name__ == "__main__":
    print(main(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "figures")))

"""Figure for docs/06-loss.md: which default boxes hard negative mining keeps, on the trained model.

A shapes validation image through the trained small model (`_trained.trained_model`: a given run, or
the cached figure run) with `minissd.explain.trace`: its 1524 default boxes matched to its objects,
the model's confidences, and `minissd.loss.MultiBoxLoss`'s mining at 3:1. Left: the image with the
positives (green) and the negatives the 3:1 rule kept (red); every other default box is an easy
negative that the loss ignores. Right: the background loss -log p(background) of every negative,
hardest first, with the cut.

    python scripts/make_figures.py --only loss [--run RUN_DIR]
"""
import os
import sys

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

IMAGE = ("val", 16)   # five objects, two of them small, one partly hidden


def scene(model, meta, split=IMAGE[0], index=IMAGE[1]):
    """`minissd.explain.Trace` of shapes ``split`` image ``index`` through ``model``."""
    from minissd.data import ShapesDataset
    from minissd.explain import trace

    s = ShapesDataset(split).get(index)
    return trace(model, s.image, s.boxes, s.labels, class_names=meta.get("class_names"))


def main(outdir, run=None):
    from _trained import run_label, save_png, trained_model
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from minissd.boxes import cxcywh_to_xyxy
    from minissd.loss import log_softmax
    from minissd.viz import draw_boxes

    model, meta, run_dir = trained_model(run)
    t = scene(model, meta)
    p = len(t.priors_cxcywh)
    pos = np.zeros(p, bool)
    pos[t.positives] = True
    neg = np.zeros(p, bool)
    neg[t.negatives] = True
    bg = -log_softmax(t.conf.astype(np.float64))[:, 0]          # background loss of every default box
    h, w = t.image_size
    px = cxcywh_to_xyxy(t.priors_cxcywh) * np.array([w, h, w, h])

    fig = Figure(figsize=(13, 4.9), dpi=90)
    FigureCanvasAgg(fig)
    fig.suptitle(f"hard negative mining on the trained model ({run_label(meta, run_dir)}), "
                 f"shapes {IMAGE[0]} image {IMAGE[1]}", fontsize=10)
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 1.25))
    for col, (mask, colour, style, what) in enumerate((
            (pos, "#3cb44b", "-",
             f"{int(pos.sum())} positives: default boxes matched\nto an object (objects in white)"),
            (neg, "#e6194b", "--", f"{int(neg.sum())} = 3 x {int(pos.sum())} mined negatives: the background\n"
                                   "boxes the model finds hardest"))):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(t.image)
        draw_boxes(ax, t.gt_boxes_px, color="white", linewidth=2.0, show_text=False, frame=(h, w))
        draw_boxes(ax, px[mask], color=colour, linewidth=1.2, linestyle=style, show_text=False, frame=(h, w))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
        ax.set_title(what, fontsize=9)

    ax = fig.add_subplot(grid[0, 2])
    negatives = np.flatnonzero(~pos)
    order = negatives[np.argsort(-bg[negatives], kind="stable")]
    k = int(neg.sum())
    x = np.arange(1, len(order) + 1)
    ax.plot(x[:k], bg[order[:k]], color="#e6194b", lw=2, label=f"mined: the top {k} = 3 x {int(pos.sum())}")
    ax.plot(x[k:], bg[order[k:]], color="0.6", lw=2, label=f"ignored: {len(order) - k} easy negatives")
    ax.axvline(k + 0.5, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("negative default boxes, hardest first (log scale)")
    ax.set_ylabel(r"background loss $-\log p_i(\mathrm{background})$ (log scale)")
    share = bg[order[:k]].sum() / max(bg[order].sum(), 1e-12)
    ax.set_title(f"mining keeps {k} of {len(order)} negatives ({100 * share:.0f}% of their background loss);\n"
                 f"the other {len(order) - k} are ignored.  L_conf = {t.loss.conf:.2f} per positive", fontsize=9)
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "loss_mined_negatives.png")
    save_png(fig, path, dpi=90)
    return [path]


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures", sys.argv[2] if len(sys.argv) > 2 else None))

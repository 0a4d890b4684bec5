"""Figure for docs/09-inference-and-nms.md: the trained model's candidates before and after per-class NMS.

A shapes test image through the trained small model (`_trained.trained_model`: a given run, or the
cached figure run), traced with `minissd.explain.trace` at the paper's post-processing: every default
box's decoded box and class probabilities, the candidates scoring above 0.01 per class (at most 400
per class), per-class NMS at IoU 0.45, the 200 best kept. Left: all the candidates, coloured by
class, more opaque the higher their score. Middle: the candidates scoring 0.3 or more. Right: what NMS
keeps of them (score 0.3 or more), with the ground truth dashed.

    python scripts/make_figures.py --only inference [--run RUN_DIR]
"""
import os
import sys

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

IMAGE = ("test", 3)
SHOW_THRESHOLD = 0.3


def main(outdir, run=None):
    from _trained import run_label, save_png, trained_model
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from minissd.data import ShapesDataset
    from minissd.explain import trace
    from minissd.viz import class_color, show_detections

    model, meta, run_dir = trained_model(run)
    names = meta.get("class_names")
    sample = ShapesDataset(IMAGE[0]).get(IMAGE[1])
    t = trace(model, sample.image, class_names=names)     # inference only: no ground truth needed
    c, d = t.candidates, t.detections
    h, w = t.image_size

    fig = Figure(figsize=(13, 4.9))
    FigureCanvasAgg(fig)
    fig.suptitle(f"per-class NMS on the trained model ({run_label(meta, run_dir)}), "
                 f"shapes {IMAGE[0]} image {IMAGE[1]}", fontsize=9)
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, k) for k in (1, 2, 3))
    strong = c["scores"] >= SHOW_THRESHOLD
    per_class = ", ".join(f"{int(np.sum(c['labels'] == k))} {n}" for k, n in enumerate(t.class_names, 1))
    for ax, mask, title in (
            (ax1, np.ones(len(c["scores"]), bool),
             f"before NMS: all {len(c['scores'])} candidates > {t.score_threshold:g}\n"
             f"({per_class}; opacity = score)"),
            (ax2, strong, f"before NMS: the {int(strong.sum())} candidates with score >= {SHOW_THRESHOLD:g}\n"
                          "(coloured by class)")):
        ax.imshow(t.image)
        idx = np.flatnonzero(mask)
        for i in idx[np.argsort(c["scores"][idx], kind="stable")]:     # high scores drawn on top
            x1, y1, x2, y2 = np.clip(c["boxes_px"][i], [-w, -h, -w, -h], [2 * w, 2 * h, 2 * w, 2 * h])
            s = float(c["scores"][i])
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=class_color(c["labels"][i]),
                                   lw=0.4 + 1.2 * s, alpha=0.15 + 0.85 * s))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    keep = np.flatnonzero(d["scores"] >= SHOW_THRESHOLD)
    show_detections(ax3, t.image, d["boxes_px"][keep], d["labels"][keep], d["scores"][keep], t.class_names,
                    gt_boxes_xyxy=sample.boxes,
                    title=f"after per-class NMS at IoU {t.nms_threshold:g}: {len(d['scores'])} left in all,\n"
                          f"{len(keep)} with score >= {SHOW_THRESHOLD:g} (ground truth dashed white)")
    ax3.title.set_fontsize(9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.85, wspace=0.04)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "inference_nms.png")
    save_png(fig, path, dpi=100)
    return [path]


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures", sys.argv[2] if len(sys.argv) > 2 else None))

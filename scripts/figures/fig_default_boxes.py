"""Figure for docs/02-default-boxes.md: SSD300's default boxes at one location of four feature maps.

Each panel is the 300 x 300 input with the cell grid of one source map (38x38 conv4_3, 19x19 fc7, 5x5
conv9_2... as in Fig. 1 of the paper, where an 8x8 and a 4x4 map show how small maps hold big boxes)
and the boxes of the cell under an object centre: ratio 1 at s_k, ratio 1 at sqrt(s_k s_k+1), then
2, 1/2 (and 3, 1/3 on the maps that have them).

    python scripts/make_figures.py --only default_boxes
"""
import os

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def main(outdir):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from PIL import Image

    from minissd.boxes import cxcywh_to_xyxy
    from minissd.data import ShapesDataset
    from minissd.priors import PRIOR_CONFIGS, make_priors, num_priors_per_location

    cfg = PRIOR_CONFIGS["ssd300"]
    S = cfg.image_size
    sample = ShapesDataset("test").get(3)
    image = np.asarray(Image.fromarray(sample.image).resize((S, S), Image.BILINEAR))
    scale = S / sample.image.shape[1]
    priors = make_priors(cfg)
    per_loc = num_priors_per_location(cfg)
    starts = np.concatenate([[0], np.cumsum([f * f * n for f, n in zip(cfg.feature_maps, per_loc, strict=True)])])
    # the object whose centre the boxes sit on: the large circle (index 1) of this sample
    obj = sample.boxes[1] * scale
    centre = (obj[:2] + obj[2:]) / 2
    colors = ["#e41a1c", "#ff7f00", "#4daf4a", "#377eb8", "#984ea3", "#a65628"]

    fig = Figure(figsize=(12, 3.4))
    FigureCanvasAgg(fig)
    for panel, k in enumerate([0, 1, 3, 4]):
        ax = fig.add_subplot(1, 4, panel + 1)
        ax.imshow(image)
        f, step = cfg.feature_maps[k], cfg.steps[k]
        for t in range(f + 1):  # cell borders of map k
            ax.axhline(t * step, color="white", lw=0.3, alpha=0.5)
            ax.axvline(t * step, color="white", lw=0.3, alpha=0.5)
        i = min(int(centre[1] // step), f - 1)
        j = min(int(centre[0] // step), f - 1)
        first = starts[k] + (i * f + j) * per_loc[k]
        boxes = cxcywh_to_xyxy(priors[first:first + per_loc[k]]) * S
        for b, c in zip(boxes, colors, strict=True):
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=c, lw=1.6))
        ax.add_patch(Rectangle((obj[0], obj[1]), obj[2] - obj[0], obj[3] - obj[1], fill=False,
                               edgecolor="white", lw=1.2, ls="--"))
        ax.plot([(j + 0.5) * step], [(i + 0.5) * step], "w+", ms=8)
        ax.set_xlim(-60, S + 60)
        ax.set_ylim(S + 60, -60)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"map {k + 1}: {f}x{f}, step {step} px\n{per_loc[k]} boxes, s_k = {cfg.min_sizes[k]} px",
                     fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.05)
    path = os.path.join(outdir, "default_boxes.png")
    fig.savefig(path, dpi=100)
    return [path]


if __name__ == "__main__":
    print(main(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "figures")))

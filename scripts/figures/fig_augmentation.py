"""Figures for docs/11-augmentation.md and docs/12-datasets-on-disk.md.

augmentation.png: shapes images (left column) and five draws of the SSD training augmentation each
(photometric distortion, zoom-out, min-IoU crop, flip, resize), with the boxes that survive.
augmentation_steps.png: one image through each step alone.
shapes_dataset.png: a grid of the built-in shapes dataset's test split with its boxes.
"""
import os

import numpy as np

from minissd.data import ShapesDataset, TrainTransform

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231")


def _figure(width_in, height_in):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _show(ax, image, boxes_px, labels, class_names, title=None):
    from matplotlib.patches import Rectangle

    ax.imshow(image, interpolation="nearest")
    for (x1, y1, x2, y2), label in zip(boxes_px, labels, strict=True):
        colour = COLOURS[(int(label) - 1) % len(COLOURS)]
        # imshow puts pixel c's centre at c, so the continuous edge x sits at x - 0.5.
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        ax.text(x1 - 0.5, y1 - 1.5, class_names[int(label) - 1], color="white", fontsize=6,
                bbox=dict(facecolor=colour, edgecolor="none", pad=0.8))
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _as_image(chw, mean, std):
    return np.clip(chw.transpose(1, 2, 0) * std + mean, 0, 255).astype(np.uint8)


def augmentation_grid(outdir, rows=3, draws=5):
    ds = ShapesDataset("test")
    mean, std = np.array([127.0, 127.0, 127.0]), np.array([64.0, 64.0, 64.0])
    transform = TrainTransform(128, mean=mean, std=std)
    fig = _figure(1.6 * (draws + 1), 1.7 * rows)
    for r in range(rows):
        sample = ds.get(r + 3)
        ax = fig.add_subplot(rows, draws + 1, r * (draws + 1) + 1)
        _show(ax, sample.image, sample.boxes, sample.labels, ds.class_names, "original" if r == 0 else None)
        for d in range(draws):
            rng = np.random.default_rng([0, r, d])
            chw, boxes, labels = transform(sample.image, sample.boxes, sample.labels, rng)
            ax = fig.add_subplot(rows, draws + 1, r * (draws + 1) + d + 2)
            _show(ax, _as_image(chw, mean, std), boxes * 128, labels, ds.class_names,
                  f"augmented #{d + 1}" if r == 0 else None)
    fig.tight_layout(pad=0.4)
    path = os.path.join(outdir, "augmentation.png")
    fig.savefig(path)
    return path


def steps_row(outdir):
    ds = ShapesDataset("test")
    sample = ds.get(4)
    mean, std = np.array([127.0, 127.0, 127.0]), np.array([1.0, 1.0, 1.0])
    off = dict(photometric=False, expand=False, crop=False, flip=False)
    steps = [("original", dict(off)),
             ("photometric", dict(off, photometric=True, photometric_prob=1.0)),
             ("zoom out (expand)", dict(off, expand=True, expand_prob=1.0)),
             ("min-IoU crop", dict(off, crop=True)),
             ("flip", dict(off, flip=True, flip_prob=1.0))]
    fig = _figure(1.7 * len(steps), 2.0)
    for k, (title, options) in enumerate(steps):
        transform = TrainTransform(128, mean=mean, std=std, **options)
        # Seeds chosen so the crop panel shows an actual crop and the zoom-out a visible one.
        rng = np.random.default_rng({"zoom out (expand)": 0, "min-IoU crop": 4}.get(title, 1))
        chw, boxes, labels = transform(sample.image, sample.boxes, sample.labels, rng)
        _show(fig.add_subplot(1, len(steps), k + 1), _as_image(chw, mean, std), boxes * 128, labels,
              ds.class_names, title)
    fig.tight_layout(pad=0.4)
    path = os.path.join(outdir, "augmentation_steps.png")
    fig.savefig(path)
    return path


def shapes_grid(outdir, rows=3, cols=6):
    ds = ShapesDataset("test")
    fig = _figure(1.6 * cols, 1.6 * rows)
    for k in range(rows * cols):
        s = ds.get(k)
        _show(fig.add_subplot(rows, cols, k + 1), s.image, s.boxes, s.labels, ds.class_names)
    fig.tight_layout(pad=0.3)
    path = os.path.join(outdir, "shapes_dataset.png")
    fig.savefig(path)
    return path


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    return [augmentation_grid(outdir), steps_row(outdir), shapes_grid(outdir)]


if __name__ == "__main__":
    import sys

    for p in main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures"):
        print("wrote", p)

"""Matplotlib helpers: detections drawn on images, training curves.

Everything here draws on a `matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``, so it works with no display, in threads and in tests, and leaves the caller's
pyplot state alone. Boxes are in image pixels (``xyxy``), as the CLIs produce them at the edge.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .fileio import atomic_write

# Ten colours that stay distinct on photos and on the shapes dataset's cluttered backgrounds.
PALETTE = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
    "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
)


def class_color(label: int) -> str:
    """A fixed colour per object class label (1..C)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def _new_figure(width_in: float, height_in: float, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _label_text(label, score, class_names):
    label = int(label)
    if class_names is not None and 1 <= label <= len(class_names):
        name = str(class_names[label - 1])
    else:
        name = f"class {label}"
    return name if score is None else f"{name} {float(score):.2f}"


def draw_boxes(ax, boxes_xyxy, labels=None, scores=None, class_names=None, *, color=None,
               linestyle="-", linewidth=2.0, fontsize=8, show_text=True, frame=None):
    """Draw pixel ``xyxy`` boxes (K, 4) on a matplotlib Axes, with class name and score.

    ``labels`` (K,) are 1..C (``class_names[label - 1]`` names them); ``scores`` (K,) optional.
    ``color=None`` colours each box by its class. ``frame=(H, W)`` keeps boxes and text near the image.
    """
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    k = len(boxes)
    labels = np.ones(k, dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
    if len(labels) != k:
        raise ValueError(f"labels has {len(labels)} entries for {k} boxes")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != k:
            raise ValueError(f"scores has {len(scores)} entries for {k} boxes")
    if frame is not None:
        # Boxes of an untrained model can lie far outside the image; clipped to a margin around it
        # they still show, and text never lands at coordinates the font rasteriser rejects.
        h, w = frame
        boxes = np.clip(boxes, [-0.5 * w, -0.5 * h, -0.5 * w, -0.5 * h], [1.5 * w, 1.5 * h, 1.5 * w, 1.5 * h])
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c = color or class_color(labels[i])
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                               linewidth=linewidth, linestyle=linestyle, clip_on=True))
        if show_text:
            text = _label_text(labels[i], None if scores is None else scores[i], class_names)
            tx, ty = x1, y1
            if frame is not None:
                tx, ty = min(max(x1, 0.0), frame[1] * 0.85), min(max(y1, 0.0), frame[0] * 0.97)
            ax.text(tx, ty, text, fontsize=fontsize, color="black", va="bottom", ha="left", clip_on=True,
                    bbox=dict(facecolor=c, edgecolor="none", alpha=0.8, pad=1.0))
    return ax


def show_detections(ax, image, boxes_xyxy, labels, scores=None, class_names=None,
                    gt_boxes_xyxy=None, title=None):
    """Show an (H, W, 3) uint8 image with detections (solid) and optional ground truth (dashed white)."""
    image = np.asarray(image)
    ax.imshow(image)
    frame = image.shape[:2]
    if gt_boxes_xyxy is not None and len(gt_boxes_xyxy):
        draw_boxes(ax, gt_boxes_xyxy, color="white", linestyle="--", linewidth=1.0, show_text=False, frame=frame)
    draw_boxes(ax, boxes_xyxy, labels, scores, class_names, frame=frame)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def save_detection_image(path, image, boxes_xyxy, labels, scores=None, class_names=None) -> str:
    """Save one image with its detections as a PNG at the image's own resolution."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    dpi = 100
    # Small images get a larger canvas so that the labels stay readable.
    scale = max(1.0, 384.0 / max(h, w))
    fig = _new_figure(w * scale / dpi, h * scale / dpi, dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    show_detections(ax, image, boxes_xyxy, labels, scores, class_names)
    _save(fig, path)
    return os.fspath(path)


def detection_grid(path, images, detections, class_names=None, ground_truths=None, ncols=4,
                   title=None) -> str:
    """Save a grid of images with their detections.

    ``detections`` is a list (one per image) of dicts with ``boxes`` (K, 4) pixel xyxy, ``labels``
    and ``scores``; ``ground_truths`` an optional list of (G, 4) pixel boxes drawn dashed.
    """
    n = len(images)
    if n == 0:
        raise ValueError("detection_grid needs at least one image")
    if len(detections) != n:
        raise ValueError(f"{len(detections)} detection lists for {n} images")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _new_figure(3.0 * ncols, 3.0 * nrows + (0.3 if title else 0.0))
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        det = detections[i]
        gt = None if ground_truths is None else ground_truths[i]
        show_detections(ax, images[i], det["boxes"], det["labels"], det.get("scores"), class_names,
                        gt_boxes_xyxy=gt)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92 if title else 0.97, wspace=0.04,
                        hspace=0.12)
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, path)
    return os.fspath(path)


def _smooth(values, window):
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    # 'valid' then left-pad with the running mean so the curve starts at the first point.
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_curves(records, path, title=None) -> str:
    """Loss parts, learning rate and validation mAP against iteration, from metrics.jsonl records.

    Training records carry ``iteration``, ``loss``, ``conf``, ``loc`` and ``lr``; evaluation records
    carry ``iteration``, ``split`` and ``map``. Either kind may be missing.
    """
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "map" in r]
    fig = _new_figure(10.0, 3.6)
    ax_loss = fig.add_subplot(1, 3, 1)
    ax_lr = fig.add_subplot(1, 3, 2)
    ax_map = fig.add_subplot(1, 3, 3)
    if train:
        it = np.array([r["iteration"] for r in train])
        window = max(1, len(train) // 25)
        for key, color in (("loss", "black"), ("conf", "tab:red"), ("loc", "tab:blue")):
            values = np.array([r[key] for r in train], dtype=np.float64)
            ax_loss.plot(it, values, color=color, alpha=0.2, linewidth=0.8)
            ax_loss.plot(it, _smooth(values, window), color=color, label=key)
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
        ax_lr.plot(it, [r["lr"] for r in train], color="tab:green")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_title("training loss (light: per record)", fontsize=10)
    ax_lr.set_title("learning rate", fontsize=10)
    # The test split is evaluated once, at the last iteration, where the last validation point also
    # sits: the two get different markers (validation: dots on a line; test: a large hollow star) and
    # their values go in the legend, so neither hides the other.
    style = {"val": dict(marker="o", markersize=4, linestyle="-", color="tab:blue", zorder=2),
             "test": dict(marker="*", markersize=16, linestyle="none", markerfacecolor="none",
                          markeredgewidth=1.5, color="tab:red", zorder=3)}
    for split in sorted({r.get("split", "val") for r in evals}, key=lambda s: s != "val"):
        pts = [r for r in evals if r.get("split", "val") == split]
        x = [r["iteration"] for r in pts]
        y = [r["map"] for r in pts]
        ax_map.plot(x, y, label=f"{split} mAP@0.5 (last {y[-1]:.3f} at {x[-1]})",
                    **style.get(split, dict(marker="s", linestyle="--")))
    if evals:
        ax_map.legend(fontsize=8, loc="lower right")
    last = max([r["iteration"] for r in train + evals] or [1])
    ax_map.set_xlim(0, last * 1.05)
    ax_map.set_ylim(0, 1)
    ax_map.grid(alpha=0.3)
    ax_map.set_title("VOC mAP@0.5 (11-point)", fontsize=10)
    for ax in (ax_loss, ax_lr, ax_map):
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return os.fspath(path)


def _save(fig, path):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # atomically (minissd/fileio.py): a reader, or a kill, never meets a half-written figure
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:].lower() or "png")

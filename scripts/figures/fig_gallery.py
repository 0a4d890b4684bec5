"""Figure for docs/10-evaluation.md: a gallery of the trained model's detections, failures included.

The trained small model (`_trained.trained_model`: a given run, or the cached figure run) detects the
shapes test images; every detection scoring at least 0.5 is matched to the ground truth the way VOC
matches (per class, by descending score, each detection to the object it overlaps most, IoU >= 0.5,
an object taken once). The first row shows images where everything was found and nothing else; the
other rows are picked automatically among the failures: images with a missed object (no detection
of its class at score >= 0.5 overlaps it at IoU >= 0.5) and images with a false positive (a detection
at score >= 0.5 that hits no free object of its class). Each missed object is tagged with what makes
it hard: small (side under 15% of the image), thin (aspect ratio 1.6 or more), occluded (a fifth or
more of its box under objects drawn after it).

    python scripts/make_figures.py --only gallery [--run RUN_DIR]
"""
import os
import sys

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SCORE = 0.5
IOU = 0.5
COLS = 4
GOOD, MISSED, FALSE = 4, 4, 4   # images per kind: one row of good ones, then the failures
TP_COLOR, FP_COLOR, MISS_COLOR = "#3cb44b", "#e6194b", "#ffe119"


def classify(det_boxes, det_labels, det_scores, gt_boxes, gt_labels, score=SCORE, iou_threshold=IOU):
    """VOC matching of one image's detections scoring at least ``score``.

    Returns ``(shown, is_tp, missed)``: the indices of those detections (by descending score), a bool
    per shown detection (True: it took an object of its class at IoU >= ``iou_threshold``), and a
    bool per ground-truth object (True: no shown detection took it).
    """
    from minissd.boxes import iou

    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    det_labels = np.asarray(det_labels).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    shown = np.flatnonzero(det_scores >= score)
    shown = shown[np.argsort(-det_scores[shown], kind="stable")]
    is_tp = np.zeros(len(shown), bool)
    taken = np.zeros(len(gt_boxes), bool)
    for j, d in enumerate(shown):
        same = np.flatnonzero(gt_labels == det_labels[d])
        if len(same) == 0:
            continue
        overlaps = iou(det_boxes[d:d + 1], gt_boxes[same])[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold and not taken[same[best]]:
            taken[same[best]] = True
            is_tp[j] = True
    return shown, is_tp, ~taken


def hardness(gt_boxes, image_size):
    """Per object a tag list from "small", "thin", "occluded" (objects are listed in drawing order,
    later on top, as `minissd.data.ShapesDataset` draws them)."""
    boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    h, w = image_size
    out = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        bw, bh = x2 - x1, y2 - y1
        tags = []
        if np.sqrt(bw * bh) < 0.15 * min(h, w):
            tags.append("small")
        if max(bw / bh, bh / bw) >= 1.6:
            tags.append("thin")
        mask = np.zeros((int(np.ceil(h)), int(np.ceil(w))), bool)
        for ox1, oy1, ox2, oy2 in boxes[i + 1:]:
            mask[int(max(oy1, 0)):int(np.ceil(oy2)), int(max(ox1, 0)):int(np.ceil(ox2))] = True
        own = mask[int(max(y1, 0)):int(np.ceil(y2)), int(max(x1, 0)):int(np.ceil(x2))]
        if own.size and own.mean() >= 0.2:
            tags.append("occluded")
        out.append(tags)
    return out


def pick(pred, score=SCORE, good=GOOD, missed=MISSED, false=FALSE):
    """``[(image index, kind)]``: the first ``good`` images with no failure, the first ``missed`` with a
    missed object (those whose misses are small, thin or occluded first), then the first ``false``
    with a false positive and no miss; kinds "good", "missed", "false positive"."""
    good_i, miss_i, fp_i = [], [], []
    for i, (d, g) in enumerate(zip(pred["detections"], pred["ground_truths"], strict=True)):
        _, is_tp, miss = classify(d["boxes"], d["labels"], d["scores"], g["boxes"], g["labels"], score)
        if miss.any():
            tags = hardness(g["boxes"], pred["sizes"][i])
            miss_i.append((not any(tags[k] for k in np.flatnonzero(miss)), i))
        elif not is_tp.all():
            fp_i.append(i)
        else:
            good_i.append(i)
    miss_i = [i for _, i in sorted(miss_i)]
    return ([(i, "good") for i in good_i[:good]] + [(i, "missed") for i in miss_i[:missed]]
            + [(i, "false positive") for i in fp_i[:false]])


def _tag(ax, x, y, text, color, frame):
    h, w = frame
    ax.text(min(max(x, 0.0), w * 0.72), min(max(y, 7.0), h * 0.97), text, fontsize=6.5, color="black",
            va="bottom", ha="left", clip_on=True, bbox=dict(facecolor=color, edgecolor="none", alpha=0.85, pad=0.8))


def draw_panel(ax, image, det, gt, class_names, title, score=SCORE):
    from matplotlib.patches import Rectangle

    frame = image.shape[:2]
    ax.imshow(image)
    shown, is_tp, miss = classify(det["boxes"], det["labels"], det["scores"], gt["boxes"], gt["labels"], score)
    tags = hardness(gt["boxes"], frame)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(gt["boxes"]).reshape(-1, 4)):
        if miss[k]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=MISS_COLOR, lw=2.0, ls="--"))
            why = f" ({', '.join(tags[k])})" if tags[k] else ""
            _tag(ax, x1, y2 + 9, f"missed {class_names[int(gt['labels'][k]) - 1]}{why}", MISS_COLOR, frame)
        else:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=0.8, ls="--"))
    for j, d in enumerate(shown):
        x1, y1, x2, y2 = det["boxes"][d]
        color = TP_COLOR if is_tp[j] else FP_COLOR
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=1.6))
        name = class_names[int(det["labels"][d]) - 1]
        text = f"{name} {det['scores'][d]:.2f}" if is_tp[j] else f"false positive: {name} {det['scores'][d]:.2f}"
        _tag(ax, x1, y1, text, color, frame)
    ax.set_xlim(0, frame[1])
    ax.set_ylim(frame[0], 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)


def main(outdir, run=None):
    from _trained import run_label, save_png, shapes_predictions, trained_model
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from minissd.data import ShapesDataset

    model, meta, run_dir = trained_model(run)
    pred = shapes_predictions(model, "test")
    chosen = pick(pred)
    names = ShapesDataset.class_names
    rows = -(-len(chosen) // COLS)
    fig = Figure(figsize=(2.6 * COLS, 2.75 * rows + 0.7))
    FigureCanvasAgg(fig)
    fig.suptitle(f"detections at score >= {SCORE:g} on shapes test images ({run_label(meta, run_dir)})\n"
                 "first row: all found; then images picked automatically for a missed object or a false positive",
                 fontsize=9)
    for n, (i, kind) in enumerate(chosen):
        ax = fig.add_subplot(rows, COLS, n + 1)
        draw_panel(ax, pred["images"][i], pred["detections"][i], pred["ground_truths"][i], names,
                   f"test image {i}: {kind}")
    fig.legend(handles=[Line2D([], [], color=TP_COLOR, lw=1.6, label="detection that hits an object"),
                        Line2D([], [], color=FP_COLOR, lw=1.6, label="false positive"),
                        Line2D([], [], color=MISS_COLOR, lw=2.0, ls="--", label="missed object"),
                        Line2D([], [], color="0.5", lw=0.8, ls="--", label="object found (ground truth)")],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.05, top=1 - 0.75 / (2.75 * rows + 0.7), hspace=0.12,
                        wspace=0.04)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "gallery.png")
    save_png(fig, path, dpi=90)
    return [path]


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures", sys.argv[2] if len(sys.argv) > 2 else None))

"""One image through SSD, step by step: every intermediate of training and inference, and a picture of it.

    trace(model, image, boxes_px, labels)  ->  Trace
        preprocess          resize to S x S, normalise with model.input_mean / input_std
        default boxes       per source map: cells, boxes per cell, sizes            (section 2.2, eq. (4))
        matching            IoU of every ground truth with every default box, positives   (section 2.2)
        encoding            offsets of the positives relative to their default boxes       (eq. (2))
        forward             loc (P, 4), conf (P, M), summarised per source map             (section 2.1)
        loss                confidence + localisation, mined negatives                     (eqs. (1)-(3))
        backward            gradient norm of every layer
        one SGD step        the loss on the same image before and after
        inference           decode -> candidates above the score threshold -> per-class NMS -> pixels
    draw(trace, path)  ->  one PNG: ground truth, matched default boxes per map, confidence heat maps
                           per map, candidates before NMS, detections after NMS

The caller's model is never changed: training runs on a copy (`copy.deepcopy`), so its weights,
gradients and caches stay as they were.

    python -m minissd.explain [--checkpoint CKPT] IMAGE --out PNG [--box x1,y1,x2,y2,LABEL ...]

makes the picture for any image; without ``--checkpoint`` it uses a freshly built (untrained) model.

Paper: sections 2.1 and 2.2, figure 2.
Walkthrough: docs/00-ssd-end-to-end.md.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from .backend import DeviceError, get_array_module, resolve_device, to_cpu, to_device
from .boxes import cxcywh_to_xyxy, decode, iou, match
from .checkpoint import CheckpointError
from .data import EvalTransform
from .imageio import read_image
from .inference import clip_offsets, load_inference_model, to_pixels
from .loss import MultiBoxLoss
from .model import build_model, softmax
from .optim import SGD

__all__ = ["SourceMap", "Trace", "draw", "format_trace", "main", "source_slices", "trace"]


@dataclass
class SourceMap:
    """What one source feature map contributes, for one image.

    name : the layer whose output feeds the heads ("conv4_3", "conv4", ...).
    size : H = W of the map; it has ``size * size`` cells.
    boxes_per_cell : A, default boxes centred on every cell.
    start, stop : this map's rows of the (P, .) outputs and of ``priors_cxcywh``.
    box_sides_px : (A, 2) width and height of the A default boxes, in pixels of the network input.
    positives : (K_k,) int, indices (into P) of this map's default boxes matched to a ground truth.
    max_object_prob : (size, size) float, per cell the highest object-class probability over its A
        boxes (softmax of conf, background excluded).
    mean_abs_loc : float, mean |loc| over this map's boxes (offsets near 0: boxes stay where they are).
    """

    name: str
    size: int
    boxes_per_cell: int
    start: int
    stop: int
    box_sides_px: np.ndarray
    positives: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    max_object_prob: np.ndarray | None = None
    mean_abs_loc: float = 0.0

    @property
    def num_boxes(self) -> int:
        return self.stop - self.start


@dataclass
class Trace:
    """Every intermediate of one image through SSD (`trace` fills it; arrays are NumPy, on the host).

    Input
        image (H, W, 3) uint8; x (3, S, S) the normalised network input; class_names.
    Ground truth (None when `trace` got no boxes)
        gt_boxes_px (G, 4) pixel xyxy; gt_xyxy (G, 4) normalised; gt_labels (G,) in 1..C.
    Default boxes
        priors_cxcywh (P, 4) normalised; maps: one `SourceMap` per source.
    Matching and encoding (None without ground truth)
        ious (G, P); target_labels (P,) 0 = background; positives (K,) prior indices;
        positive_gt (K,) the ground truth each positive is matched to; loc_t (K, 4) its encoded offsets.
    Forward
        loc (P, 4) offsets; conf (P, M) logits; probs (P, M) softmax.
    Loss, backward, SGD (None without ground truth)
        loss (`minissd.loss.LossParts`); num_negatives (mined); negatives (prior indices);
        grad_norms {layer: |dL/dθ|}; lr; loss_after (LossParts on the same image after one SGD step).
    Inference (with the caller's weights, before the SGD step)
        boxes_xyxy (P, 4) decoded, normalised; candidates: dict boxes_px (Q, 4), labels, scores,
        priors (Q,) above ``score_threshold`` and within ``pre_nms_top_k`` per class; detections: dict
        boxes_px (D, 4), labels, scores after per-class NMS and ``top_k``.
    """

    image: np.ndarray
    x: np.ndarray
    class_names: list
    priors_cxcywh: np.ndarray
    maps: list
    loc: np.ndarray
    conf: np.ndarray
    probs: np.ndarray
    boxes_xyxy: np.ndarray
    candidates: dict
    detections: dict
    score_threshold: float
    nms_threshold: float
    gt_boxes_px: np.ndarray | None = None
    gt_xyxy: np.ndarray | None = None
    gt_labels: np.ndarray | None = None
    ious: np.ndarray | None = None
    target_labels: np.ndarray | None = None
    positives: np.ndarray | None = None
    positive_gt: np.ndarray | None = None
    loc_t: np.ndarray | None = None
    loss: object = None
    num_negatives: int | None = None
    negatives: np.ndarray | None = None
    grad_norms: dict | None = None
    lr: float | None = None
    loss_after: object = None
    model_name: str = ""

    @property
    def image_size(self) -> tuple:
        """(H, W) of the original image."""
        return tuple(self.image.shape[:2])

    def class_name(self, label: int) -> str:
        label = int(label)
        if 1 <= label <= len(self.class_names):
            return str(self.class_names[label - 1])
        return f"class{label}"


def source_slices(model) -> list:
    """``(name, start, stop)`` per source map: its rows of the (N, P, .) outputs, shallow to deep.

    The heads write map after map, row-major over cells, A boxes per cell (`minissd.priors.make_priors`
    order), so map k owns ``size_k ** 2 * A_k`` consecutive rows.
    """
    out, start = [], 0
    for name, size, a in zip(model.source_names, model.source_sizes, model.boxes_per_location, strict=True):
        stop = start + int(size) * int(size) * int(a)
        out.append((name, start, stop))
        start = stop
    if start != model.num_priors:
        raise ValueError(f"source maps hold {start} boxes but the model has {model.num_priors} priors")
    return out


def _model_device(model) -> str:
    first = next(iter(model.state_dict().values()))
    return "cpu" if get_array_module(first) is np else "cuda"


def _grad_norms(model) -> dict:
    """{layer name: sqrt(sum of its squared parameter gradients)} in parameter order."""
    sums = {}
    for name, _, g in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        g = to_cpu(g).astype(np.float64)
        sums[layer] = sums.get(layer, 0.0) + float(np.sum(g * g))
    return {k: math.sqrt(v) for k, v in sums.items()}


def _candidates(boxes_xyxy, probs, score_threshold, pre_nms_top_k):
    """Per class: boxes whose probability exceeds ``score_threshold``, the ``pre_nms_top_k`` best
    (ties to the lower prior index), as `minissd.boxes.batched_detect` takes them into NMS."""
    boxes, labels, scores, priors = [], [], [], []
    for c in range(1, probs.shape[1]):
        idx = np.flatnonzero(probs[:, c] > score_threshold)
        order = np.argsort(-probs[idx, c], kind="stable")[:pre_nms_top_k]
        idx = idx[order]
        boxes.append(boxes_xyxy[idx])
        labels.append(np.full(len(idx), c, np.int64))
        scores.append(probs[idx, c])
        priors.append(idx)
    return (np.concatenate(boxes).reshape(-1, 4), np.concatenate(labels), np.concatenate(scores),
            np.concatenate(priors).astype(np.int64))


def _to_px(boxes_xyxy, height, width):
    return np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) * np.array([width, height, width, height], np.float64)


def trace(model, image, boxes_px=None, labels=None, *, class_names=None, threshold: float = 0.5,
          strategy: str = "bipartite", neg_pos_ratio: float = 3.0, lr: float = 1e-3, momentum: float = 0.9,
          weight_decay: float = 5e-4, score_threshold: float = 0.01, nms_threshold: float = 0.45,
          pre_nms_top_k: int = 400, top_k: int = 200) -> Trace:
    """Follow one image through SSD and keep every intermediate.

    Parameters
    ----------
    model : `minissd.model.SSD` (never changed: the training half runs on a deep copy).
    image : (H, W, 3) uint8 RGB, any size (resized to the model's input).
    boxes_px : (G, 4) pixel xyxy ground truth, optional; with it the trace also covers matching,
        encoding, loss, backward and one SGD step.
    labels : (G,) int in 1..C, required with ``boxes_px``.
    class_names : names of classes 1..C (default ``class1``, ``class2``, ...).
    threshold, strategy : matching (IoU 0.5, the paper's bipartite-then-threshold rule).
    neg_pos_ratio : hard negatives per positive (3).
    lr, momentum, weight_decay : the one SGD step (Caffe's update and parameter groups, the paper's
        1e-3, 0.9, 5e-4).
    score_threshold, nms_threshold, pre_nms_top_k, top_k : post-processing (0.01, 0.45, 400, 200).

    Returns
    -------
    Trace.

    Raises ValueError naming a bad argument (image shape or dtype, boxes without labels, ...).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got shape {image.shape} {image.dtype}")
    if (boxes_px is None) != (labels is None):
        raise ValueError("boxes_px and labels go together: give both or neither")
    if class_names is None:
        class_names = [f"class{i}" for i in range(1, model.num_classes)]
    class_names = list(class_names)
    if len(class_names) != model.num_classes - 1:
        raise ValueError(f"class_names has {len(class_names)} names but the model has "
                         f"{model.num_classes - 1} object classes")
    height, width = image.shape[:2]
    has_gt = boxes_px is not None
    if has_gt:
        boxes_px = np.asarray(boxes_px, np.float32).reshape(-1, 4)
        labels = np.asarray(labels).reshape(-1)
    else:
        boxes_px, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    if len(labels) and (labels.min() < 1 or labels.max() >= model.num_classes):
        raise ValueError(f"labels must lie in 1..{model.num_classes - 1}, got {labels.tolist()}")

    # 1. Preprocess: resize to S x S, normalise; boxes divided by the image size.
    transform = EvalTransform(model.image_size, mean=model.input_mean, std=model.input_std)
    x, gt_xyxy, gt_labels = transform(image, boxes_px, labels.astype(np.int64))
    x = x.astype(model.dtype)
    device = _model_device(model)

    # 2. Default boxes, map by map.
    priors = np.asarray(model.priors_cxcywh)
    maps = []
    for name, start, stop in source_slices(model):
        k = len(maps)
        a = model.boxes_per_location[k]
        sides = priors[start:start + a, 2:] * model.image_size       # (A, 2) the first cell's boxes
        maps.append(SourceMap(name, int(model.source_sizes[k]), int(a), start, stop, sides))

    # 3. Forward with the caller's weights (on a copy: the caller's caches stay as they were).
    work = copy.deepcopy(model)
    work.input_grad = False
    xb = to_device(x[None], device)                                     # (1, 3, S, S)
    loc_d, conf_d = work.forward(xb)
    loc, conf = to_cpu(loc_d)[0], to_cpu(conf_d)[0]                   # (P, 4), (P, M)
    probs = to_cpu(softmax(conf_d))[0].astype(np.float64)             # (P, M)
    for m in maps:
        per_cell = probs[m.start:m.stop, 1:].reshape(m.size, m.size, m.boxes_per_cell, -1)   # (H, W, A, C)
        m.max_object_prob = per_cell.max(axis=(2, 3))
        m.mean_abs_loc = float(np.abs(loc[m.start:m.stop]).mean())

    # 4. Inference: decode, candidates, NMS, pixels.
    clipped = clip_offsets(loc_d)
    boxes_xyxy = decode(to_cpu(clipped)[0].astype(np.float64), priors, model.variances)     # (P, 4)
    if model.config.get("clip_boxes_before_nms", False):
        boxes_xyxy = np.clip(boxes_xyxy, 0.0, 1.0)
    cb, cl, cs, cp = _candidates(boxes_xyxy, probs, float(score_threshold), int(pre_nms_top_k))
    det = work.detect(clipped, conf_d, score_threshold=score_threshold, nms_threshold=nms_threshold,
                      pre_nms_top_k=pre_nms_top_k, top_k=top_k)[0]
    candidates = {"boxes_px": _to_px(cb, height, width), "labels": cl, "scores": cs, "priors": cp}
    detections = {"boxes_px": to_pixels(det.boxes, height, width),
                  "labels": to_cpu(det.labels).astype(np.int64), "scores": to_cpu(det.scores).astype(np.float64)}

    t = Trace(image=image, x=x, class_names=class_names, priors_cxcywh=priors, maps=maps, loc=loc, conf=conf,
              probs=probs, boxes_xyxy=boxes_xyxy, candidates=candidates, detections=detections,
              score_threshold=float(score_threshold), nms_threshold=float(nms_threshold),
              model_name=str(model.config.get("name", "")))
    if not has_gt:
        return t

    # 5. Matching and encoding (the targets of training).
    gt64 = np.asarray(gt_xyxy, np.float64).reshape(-1, 4)
    t.gt_boxes_px, t.gt_xyxy, t.gt_labels = boxes_px.astype(np.float64), gt64, np.asarray(gt_labels, np.int64)
    t.ious = iou(gt64, cxcywh_to_xyxy(priors)) if len(gt64) else np.zeros((0, len(priors)))
    target_labels, matched_xyxy = match(priors, gt64, t.gt_labels, threshold=threshold, strategy=strategy,
                                        index=model.prior_index)
    loc_t_all, labels_t = work.targets([gt64], [t.gt_labels], threshold=threshold, strategy=strategy)
    t.target_labels = np.asarray(target_labels, np.int64)
    t.positives = np.flatnonzero(t.target_labels > 0)
    # The ground truth a positive is matched to: the one whose box it carries.
    same = np.all(matched_xyxy[t.positives][:, None, :] == gt64[None, :, :], axis=2)     # (K, G)
    t.positive_gt = (np.argmax(same, axis=1) if len(gt64) else np.zeros(0)).astype(np.int64)
    t.loc_t = to_cpu(loc_t_all)[0][t.positives].astype(np.float64)
    for m in maps:
        m.positives = t.positives[(t.positives >= m.start) & (t.positives < m.stop)]

    # 6. Loss, backward, gradient norms.
    loss_fn = MultiBoxLoss(neg_pos_ratio=neg_pos_ratio)
    work.zero_grad()
    t.loss = loss_fn.forward(loc_d, conf_d, loc_t_all, labels_t)
    t.negatives = np.flatnonzero(to_cpu(loss_fn.neg_mask)[0])
    t.num_negatives = len(t.negatives)
    d_loc, d_conf = loss_fn.backward()
    work.backward(d_loc, d_conf)
    t.grad_norms = _grad_norms(work)

    # 7. One SGD step on the copy, and the loss on the same image after it.
    optimizer = SGD(work, lr=lr, momentum=momentum, weight_decay=weight_decay, groups="caffe")
    optimizer.step()
    t.lr = float(lr)
    loc2, conf2 = work.forward(xb)
    t.loss_after = MultiBoxLoss(neg_pos_ratio=neg_pos_ratio).forward(loc2, conf2, loc_t_all, labels_t)
    work.clear_cache()
    return t


# ----------------------------------------------------------------------------------------------
# Text and picture
# ----------------------------------------------------------------------------------------------
def format_trace(t: Trace) -> str:
    """A few lines that summarise a trace (what the command prints)."""
    h, w = t.image_size
    s = t.x.shape[1]
    lines = [(f"image {w}x{h} -> input (3, {s}, {s}); {len(t.priors_cxcywh)} default boxes on "
              f"{len(t.maps)} maps")]
    for m in t.maps:
        pos = "" if t.positives is None else f", {len(m.positives)} positives"
        lines.append(f"  {m.name:9s} {m.size:3d}x{m.size:<3d} x {m.boxes_per_cell} = {m.num_boxes:5d} boxes, "
                     f"sides {m.box_sides_px.min():.0f}..{m.box_sides_px.max():.0f} px{pos}, "
                     f"max object prob {m.max_object_prob.max():.3f}")
    if t.loss is not None:
        lines.append(f"loss {t.loss.total:.4f} = conf {t.loss.conf:.4f} + loc {t.loss.loc:.4f} "
                     f"(N = {t.loss.num_pos} positives, {t.num_negatives} mined negatives)")
        lines.append(f"one SGD step (lr {t.lr:g}): loss on this image {t.loss.total:.4f} -> {t.loss_after.total:.4f}")
    lines.append(f"{len(t.candidates['scores'])} candidates above {t.score_threshold:g} -> "
                 f"{len(t.detections['scores'])} detections after NMS {t.nms_threshold:g}")
    d = t.detections
    for box, lab, sc in list(zip(d["boxes_px"], d["labels"], d["scores"], strict=True))[:5]:
        lines.append(f"  {t.class_name(lab):10s} {sc:.3f}  [{', '.join(f'{v:.1f}' for v in box)}]")
    return "\n".join(lines)


def _show_image(ax, t: Trace, title: str):
    ax.imshow(t.image)
    h, w = t.image_size
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def _draw_gt(ax, t: Trace, text: bool = False):
    from .viz import draw_boxes

    if t.gt_boxes_px is not None and len(t.gt_boxes_px):
        draw_boxes(ax, t.gt_boxes_px, t.gt_labels, class_names=t.class_names, color="white" if not text else None,
                   linestyle="--", linewidth=1.2, show_text=text, frame=t.image_size)


def draw(t: Trace, path, *, max_candidates: int = 150, show_threshold: float = 0.3, max_detections: int = 15,
         title: str | None = None, dpi: int = 100) -> str:
    """Draw a `Trace` as one PNG and return its path.

    Row 1: the image with its ground truth; the candidates before NMS (the ``max_candidates``
    best); the detections after NMS scoring at least ``show_threshold``, at most ``max_detections``
    (or, when none scores that high, the five best, dashed). Row 2: per source map, the default
    boxes matched to a ground truth. Row 3: per source map, the highest object probability of each
    cell, over the image. ``dpi``: resolution (a panel is 2.7 inches wide).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .viz import draw_boxes

    h, w = t.image_size
    n = len(t.maps)
    cols = max(n, 3)
    fig = Figure(figsize=(2.7 * cols, 2.9 * 3 + (0.3 if title else 0)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    frame = t.image_size

    # Row 1.
    ax = fig.add_subplot(3, cols, 1)
    _show_image(ax, t, "input + ground truth" if t.gt_boxes_px is not None else "input (no ground truth given)")
    _draw_gt(ax, t, text=True)

    ax = fig.add_subplot(3, cols, 2)
    c = t.candidates
    order = np.argsort(-c["scores"], kind="stable")[:max_candidates]
    _show_image(ax, t, f"before NMS: {len(c['scores'])} candidates > {t.score_threshold:g}\n"
                       f"(best {len(order)} drawn)")
    draw_boxes(ax, c["boxes_px"][order], c["labels"][order], show_text=False, linewidth=0.6, frame=frame)

    ax = fig.add_subplot(3, cols, 3)
    d = t.detections
    keep = np.flatnonzero(d["scores"] >= show_threshold)
    if len(keep):
        shown = keep[:max_detections]
        _show_image(ax, t, f"after NMS {t.nms_threshold:g}: {len(keep)} of {len(d['scores'])}\n"
                           f"score >= {show_threshold:g}" + (f" (best {len(shown)} drawn)" if len(shown) < len(keep)
                                                             else ""))
        keep = shown
        draw_boxes(ax, d["boxes_px"][keep], d["labels"][keep], d["scores"][keep], t.class_names, frame=frame,
                   fontsize=6)
    else:
        keep = np.arange(min(5, len(d["scores"])))
        _show_image(ax, t, f"after NMS {t.nms_threshold:g}: none >= {show_threshold:g}\n"
                           f"(the best {len(keep)} of {len(d['scores'])}, dashed)")
        draw_boxes(ax, d["boxes_px"][keep], d["labels"][keep], d["scores"][keep], t.class_names, frame=frame,
                   linestyle="--", linewidth=1.0, fontsize=6)

    # Row 2: matched default boxes per map.
    for k, m in enumerate(t.maps):
        ax = fig.add_subplot(3, cols, cols + k + 1)
        if t.positives is None:
            _show_image(ax, t, f"{m.name} {m.size}x{m.size}: no ground truth to match")
            continue
        _show_image(ax, t, f"{m.name} {m.size}x{m.size}, {m.boxes_per_cell}/cell:\n"
                           f"{len(m.positives)} matched default boxes")
        _draw_gt(ax, t)
        if len(m.positives):
            boxes = _to_px(cxcywh_to_xyxy(t.priors_cxcywh[m.positives]), h, w)
            draw_boxes(ax, boxes, t.target_labels[m.positives], show_text=False, linewidth=1.0, frame=frame)

    # Row 3: heat maps of the highest object probability per cell.
    im = None
    for k, m in enumerate(t.maps):
        ax = fig.add_subplot(3, cols, 2 * cols + k + 1)
        _show_image(ax, t, f"{m.name}: max object prob\n(highest {m.max_object_prob.max():.2f})")
        im = ax.imshow(m.max_object_prob, extent=(0, w, h, 0), cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.65,
                       interpolation="nearest")
    if im is not None:
        fig.colorbar(im, ax=fig.axes[-n:], shrink=0.8, label="probability")
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------
SHAPES_CLASSES = ("circle", "square", "triangle", "cross")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minissd.explain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Follow one image through SSD and draw every step: ground truth, matched default boxes "
                     "per source map, per-map confidence heat maps, candidates before NMS, detections after."),
        epilog=("examples:\n"
                "  python -m minissd.explain --checkpoint runs/X/best.npz photo.jpg --out photo_explained.png\n"
                "  python -m minissd.explain shapes.png --box 10,20,60,70,circle --out trace.png   "
                "(untrained model)"),
    )
    p.add_argument("image", metavar="IMAGE", help="an image file (any size; resized to the model's input)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="a run's best.npz / last.npz or a save_model file (default: a freshly built, "
                        "untrained model)")
    p.add_argument("--model", default="small", choices=("small", "ssd300", "ssd512"),
                   help="without --checkpoint: the network to build (default: small)")
    p.add_argument("--seed", type=int, default=0, help="without --checkpoint: the weights' seed (default: 0)")
    p.add_argument("--box", action="append", default=[], metavar="X1,Y1,X2,Y2,LABEL",
                   help="a ground-truth box in pixels and its class (name or number 1..C); repeat for more. "
                        "With boxes the picture also shows matching, and the text the loss and one SGD step")
    p.add_argument("--out", metavar="PNG", help="where to write the picture (default: IMAGE_STEM_explained.png)")
    p.add_argument("--threshold", type=float, default=0.3, metavar="S",
                   help="draw detections scoring at least S (default: 0.3)")
    p.add_argument("--device", metavar="DEV", help="'cpu' or 'cuda' (default: $MINISSD_DEVICE, else cpu)")
    return p


def parse_box(text: str, class_names) -> tuple:
    """``"x1,y1,x2,y2,LABEL"`` -> ((x1, y1, x2, y2), label); LABEL is a class name or 1..C."""
    parts = [s.strip() for s in text.split(",")]
    if len(parts) != 5:
        raise ValueError(f"--box {text!r}: expected X1,Y1,X2,Y2,LABEL")
    try:
        coords = tuple(float(v) for v in parts[:4])
    except ValueError:
        raise ValueError(f"--box {text!r}: the four coordinates must be numbers") from None
    if not all(math.isfinite(v) for v in coords) or coords[2] <= coords[0] or coords[3] <= coords[1]:
        raise ValueError(f"--box {text!r}: need finite x1 < x2 and y1 < y2")
    names = list(class_names)
    if parts[4] in names:
        label = names.index(parts[4]) + 1
    elif parts[4].isdigit() and 1 <= int(parts[4]) <= len(names):
        label = int(parts[4])
    else:
        raise ValueError(f"--box {text!r}: label must be one of {', '.join(names)} or a number 1..{len(names)}")
    return coords, label


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        image = read_image(args.image)
        if args.checkpoint:
            if not os.path.exists(args.checkpoint):
                raise FileNotFoundError(f"checkpoint {args.checkpoint!r} does not exist")
            model, class_names, _ = load_inference_model(args.checkpoint, device)
            title = f"{os.path.basename(args.image)} through {model.config['name']} ({args.checkpoint})"
        else:
            class_names = list(SHAPES_CLASSES)
            model = build_model(args.model, len(class_names) + 1, rng=np.random.default_rng(args.seed))
            model.to(device)
            print(f"no --checkpoint: a freshly built {args.model} model with random weights (seed {args.seed}); "
                  f"it is UNTRAINED, so its scores and detections mean nothing yet")
            title = f"{os.path.basename(args.image)} through an UNTRAINED {args.model} model (seed {args.seed})"
        boxes = [parse_box(b, class_names) for b in args.box]
        h, w = image.shape[:2]
        for coords, _ in boxes:
            if coords[0] < 0 or coords[1] < 0 or coords[2] > w or coords[3] > h:
                raise ValueError(f"--box {coords}: outside the {w}x{h} image")
        if boxes:
            t = trace(model, image, np.array([c for c, _ in boxes], np.float32), np.array([lab for _, lab in boxes]),
                      class_names=class_names)
        else:
            t = trace(model, image, class_names=class_names)
        out = args.out or os.path.splitext(os.path.basename(args.image))[0] + "_explained.png"
        print(format_trace(t))
        draw(t, out, show_threshold=args.threshold, title=title)
        print(f"wrote {out}")
        return 0
    except (ValueError, CheckpointError, DeviceError, FileNotFoundError, OSError) as err:
        print(f"minissd.explain: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

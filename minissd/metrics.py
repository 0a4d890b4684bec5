"""Detection metrics: PASCAL VOC average precision (2007 11-point and area), mAP; COCO via pycocotools.

Paper: section 3 (results are VOC2007 test mAP, 11-point, IoU 0.5; COCO AP through the COCO API).
Walkthrough: docs/10-evaluation.md.

VOC semantics follow the devkit's ``VOCevaldet.m`` / ``VOCap.m``:

* the detections of one class are ranked by score over the whole dataset (here a stable sort:
  equal scores keep image order, then detection order);
* each detection, in that order, looks at the ground truth boxes of its class in its image and takes
  the one with the highest IoU; if that IoU >= ``iou_threshold`` the detection is a true positive the
  first time that box is taken and a false positive (a duplicate) after that; a box marked
  ``difficult`` counts neither way (and is not counted in the number of objects); below the
  threshold it is a false positive;
* precision and recall after each rank give AP: 11-point (VOC2007: the mean over recall thresholds
  0, 0.1, ..., 1 of the best precision at recall >= t) or area (VOC2010+: the area under the
  precision envelope).

A class with no (non-difficult) ground truth has no recall, so its AP is undefined: it is reported
as NaN and left out of the mean. A class with objects but no detections has AP 0.

Everything here runs on the host (NumPy); detections come from the model already in pixels.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from .boxes import iou as box_iou
from .fileio import write_text_atomic

__all__ = ["AP_THRESHOLDS", "AP_CONVENTIONS", "voc_ap", "evaluate_detections", "match_detections", "coco_evaluate",
           "coco_evaluate_file",
           "write_coco_results", "coco_results", "COCO_STAT_NAMES"]

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# ----------------------------------------------------------------------------------------------
# Average precision of one ranked list
# ----------------------------------------------------------------------------------------------
# The recall thresholds of VOC2007's 11-point AP, as each evaluator in use computes them. They differ
# only where a recall lands exactly on a threshold (docs/10-evaluation.md, "Whose 11 thresholds").
AP_THRESHOLDS = {
    # k / 10 as the nearest double: a recall of exactly k / 10 (= tp / n) always reaches threshold k.
    "exact": tuple(k / 10 for k in range(11)),
    # np.arange(0, 1.1, 0.1) = 0.1 * k: 0.30000000000000004, 0.6000000000000001, 0.7000000000000001
    # (py-faster-rcnn's voc_eval.py and the Python evaluators derived from it).
    "python": tuple(float(t) for t in np.arange(0.0, 1.1, 0.1)),
    # MATLAB's 0:0.1:1 (VOCdevkit VOCevaldet.m): per MathWorks' description of the colon operator, the
    # first half is a + k*d, the second half b - (n-k)*d and, for even n, the middle (a + b) / 2:
    # 0.30000000000000004 at k = 3, but 1 - 0.4 = 0.6 and 1 - 0.30000000000000004 = 0.7 exactly.
    "matlab": tuple([0.1 * k for k in range(5)] + [0.5] + [1.0 - 0.1 * (10 - k) for k in range(6, 11)]),
    # Caffe's ComputeAP (the authors' DetectionEvaluate): thresholds j / 10. in double, but recall held as
    # float32 tp / n, so 0.3f > 0.3 reaches while 0.7f and 0.9f < 0.7, 0.9 miss (precision and sum in float32).
    "caffe": tuple(k / 10 for k in range(11)),
}
AP_CONVENTIONS = tuple(AP_THRESHOLDS)


def _check_thresholds(thresholds) -> str:
    if thresholds not in AP_THRESHOLDS:
        raise ValueError(f"thresholds must be one of {AP_CONVENTIONS}, got {thresholds!r}")
    return thresholds


def voc_ap(recall, precision, use_07_metric: bool = True, thresholds: str = "exact") -> float:
    """Average precision from the precision/recall after each rank.

    Parameters
    ----------
    recall : (K,) float, recall after each of the K ranked detections (non-decreasing).
    precision : (K,) float, precision after each of them.
    use_07_metric : bool
        True: VOC2007's 11-point AP, ``(1/11) sum_{t in 0, 0.1, ..., 1} max_{r >= t} p(r)`` (0 where no
        rank reaches recall t). False: the area under the precision envelope (VOC2010 and later),
        ``sum_k (r_k - r_{k-1}) max_{j >= k} p_j``.
    thresholds : {"exact", "python", "matlab", "caffe"}
        How the 11 recall thresholds are computed (`AP_THRESHOLDS`; only for the 11-point AP):
        "exact" (default) ``k / 10``; "python" ``np.arange(0, 1.1, 0.1)`` (py-faster-rcnn's voc_eval.py);
        "matlab" the devkit's ``0:0.1:1`` as MATLAB's colon operator computes it; "caffe" the authors'
        Caffe ComputeAP (recall and precision in float32). They differ only where a recall equals a
        threshold exactly: recall 3/10 reaches t = 0.3 under "exact" and "caffe" and misses it under
        "python" and "matlab"; recall 7/10 misses t = 0.7 under "python" and "caffe".

    Returns
    -------
    float in [0, 1]; 0 for empty input (a class with no detections).
    """
    _check_thresholds(thresholds)
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or precision.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"voc_ap: recall and precision must be 1-D of one length, got shapes "
                         f"{recall.shape} and {precision.shape}")
    for name, a in (("recall", recall), ("precision", precision)):
        if not np.all(np.isfinite(a)) or (a.size and (a.min() < 0 or a.max() > 1)):
            raise ValueError(f"voc_ap: {name} must hold finite values in [0, 1]")
    if use_07_metric:
        if thresholds == "caffe":
            # bbox_util.cpp ComputeAP: vector<float> rec, prec; `rec[i] < j / 10.` in double; float ap.
            rec32 = recall.astype(np.float32).astype(np.float64)
            prec32 = precision.astype(np.float32)
            ap = np.float32(0.0)
            for k in range(10, -1, -1):
                reached = prec32[rec32 >= k / 10]
                ap += (reached.max() if reached.size else np.float32(0.0)) / np.float32(11)
            return float(ap)
        best = []
        for t in AP_THRESHOLDS[thresholds]:
            reached = precision[recall >= t]
            best.append(float(reached.max()) if reached.size else 0.0)
        return float(np.sum(best) / 11)
    # Sentinels: recall runs from 0 to 1, precision drops to 0 after the last rank.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]        # envelope: best precision at recall >= r
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1      # where recall changes
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


# ----------------------------------------------------------------------------------------------
# Matching detections to ground truth in one image
# ----------------------------------------------------------------------------------------------
def match_detections(det_xyxy, gt_xyxy, gt_difficult, iou_threshold: float = 0.5,
                     inclusive_pixels: bool = False, devkit_matching: bool = True):
    """True/false positives of one image's detections of one class, given in rank order.

    Parameters
    ----------
    det_xyxy : (K, 4) detections, already sorted by descending score.
    gt_xyxy : (G, 4) ground truth boxes of the same class in the same image.
    gt_difficult : (G,) bool.
    devkit_matching : bool
        True (the devkit): a detection takes the box of highest IoU, and is a duplicate (false
        positive) if that box was already taken, even when another box would still be free.
        False: it takes the free box of highest IoU (COCO-style greedy matching).

    Returns
    -------
    tp : (K,) bool, fp : (K,) bool. A detection matched to a difficult box is neither.
    """
    k = len(det_xyxy)
    tp = np.zeros(k, dtype=bool)
    fp = np.zeros(k, dtype=bool)
    if k == 0:
        return tp, fp
    if len(gt_xyxy) == 0:
        fp[:] = True
        return tp, fp
    # minissd's one IoU (with the devkit's +1 when inclusive_pixels); the same operations in the same
    # order as the NumPy code that stood here, so every overlap, and hence every AP, is bitwise unchanged.
    iou = box_iou(np.asarray(det_xyxy, dtype=np.float64).reshape(-1, 4),
                  np.asarray(gt_xyxy, dtype=np.float64).reshape(-1, 4), bool(inclusive_pixels))  # (K, G)
    if devkit_matching:
        # Each detection's best box does not depend on earlier matches, so this is vectorised:
        # a hit on a non-difficult box is a TP only for the first (best-ranked) detection taking it.
        best = np.argmax(iou, axis=1)                                     # (K,) first max on ties
        hit = iou[np.arange(k), best] >= iou_threshold
        on_difficult = hit & gt_difficult[best]
        real = hit & ~on_difficult
        first = np.zeros(k, dtype=bool)
        idx = np.flatnonzero(real)
        _, first_of_box = np.unique(best[idx], return_index=True)
        first[idx[first_of_box]] = True
        tp = first
        fp = ~hit | (real & ~first)
        return tp, fp
    taken = np.zeros(len(gt_xyxy), dtype=bool)
    for d in range(k):
        # Difficult boxes stay available: any number of detections may land on them, uncounted.
        cand = np.where(taken, -1.0, iou[d])
        j = int(np.argmax(cand))
        if cand[j] < iou_threshold:
            fp[d] = True
        elif not gt_difficult[j]:
            tp[d] = True
            taken[j] = True
    return tp, fp


# ----------------------------------------------------------------------------------------------
# VOC evaluation over a dataset
# ----------------------------------------------------------------------------------------------
def _fields(item, names, what, i):
    """``names`` read from a mapping, an object with those attributes (Sample, Detections) or a tuple.

    A ground truth's ``difficult`` may be missing (None: nothing is difficult).
    """
    optional = names[-1] == "difficult"
    if isinstance(item, Mapping):
        missing = [n for n in names if n not in item and not (optional and n == "difficult")]
        if missing:
            raise ValueError(f"{what}[{i}] is a mapping without key(s) {missing}")
        return [item.get(n) for n in names]
    if all(hasattr(item, n) for n in names[:2]):   # named tuples and records, by attribute
        return [getattr(item, n, None) for n in names]
    if isinstance(item, (tuple, list)) and (len(item) == len(names) or (optional and len(item) == 2)):
        return list(item) + [None] * (len(names) - len(item))
    raise ValueError(f"{what}[{i}] must be a tuple {tuple(names)}, a mapping with those keys or an object "
                     f"with those attributes, got {type(item).__name__}")


def _as_boxes(b, what):
    b = np.asarray(b, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what} must have shape (K, 4) xyxy, got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{what} holds NaN or inf")
    return b


def _as_labels(lab, n, num_classes, what):
    lab = np.asarray(lab)
    if lab.size == 0 and n == 0:
        return np.zeros(0, dtype=np.int64)
    if lab.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},) to match its boxes, got {lab.shape}")
    if lab.dtype.kind not in "iu":
        if lab.dtype.kind == "f" and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise ValueError(f"{what} must hold integer labels, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    if n and (lab.min() < 1 or lab.max() > num_classes):
        raise ValueError(f"{what} must lie in 1..{num_classes} (0 is background), got values in "
                         f"[{lab.min()}, {lab.max()}]")
    return lab


def _prepare(detections, ground_truths, num_classes):
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be the number of object classes C >= 1, got {num_classes!r}")
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections has {len(detections)} images but ground_truths has {len(ground_truths)}")
    dets, gts = [], []
    for i, d in enumerate(detections):
        boxes, labels, scores = _fields(d, ("boxes", "labels", "scores"), "detections", i)
        boxes = _as_boxes(boxes, f"detections[{i}].boxes")
        if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):  # as minissd.boxes.iou needs
            raise ValueError(f"detections[{i}].boxes must be xyxy with x2 >= x1 and y2 >= y1")
        labels = _as_labels(labels, len(boxes), num_classes, f"detections[{i}].labels")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1) if scores is not None else None
        if scores is None or scores.shape != (len(boxes),):
            raise ValueError(f"detections[{i}].scores must have shape ({len(boxes)},), got "
                             f"{None if scores is None else scores.shape}")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"detections[{i}].scores holds NaN or inf")
        dets.append((boxes, labels, scores))
    for i, g in enumerate(ground_truths):
        boxes, labels, difficult = _fields(g, ("boxes", "labels", "difficult"), "ground_truths", i)
        boxes = _as_boxes(boxes, f"ground_truths[{i}].boxes")
        if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
            raise ValueError(f"ground_truths[{i}].boxes must be xyxy with x2 >= x1 and y2 >= y1")
        labels = _as_labels(labels, len(boxes), num_classes, f"ground_truths[{i}].labels")
        if difficult is None:
            difficult = np.zeros(len(boxes), dtype=bool)
        difficult = np.asarray(difficult).reshape(-1)
        if difficult.shape != (len(boxes),) or difficult.dtype.kind not in "biu":
            raise ValueError(f"ground_truths[{i}].difficult must be ({len(boxes)},) bool, got "
                             f"{difficult.shape} {difficult.dtype}")
        gts.append((boxes, labels, difficult.astype(bool)))
    return dets, gts


def evaluate_detections(detections, ground_truths, num_classes: int, iou_threshold: float = 0.5,
                        use_07_metric: bool = True, inclusive_pixels: bool = False, *,
                        devkit_matching: bool = True, thresholds: str = "exact") -> dict:
    """PASCAL VOC AP per class and mAP.

    Paper: section 3 (VOC2007 test, 11-point mAP at IoU 0.5).

    Parameters
    ----------
    detections : list over images of ``(boxes (K, 4) xyxy, labels (K,) in 1..C, scores (K,))``; tuples,
        mappings with keys ``boxes``/``labels``/``scores``, or objects with those attributes
        (``Detections`` from ``model.detect``).
    ground_truths : list over images of ``(boxes (G, 4) xyxy, labels (G,), difficult (G,) bool)``; tuples
        (``difficult`` may be left out), mappings, or objects such as ``Sample``.
    num_classes : C, the number of object classes (labels run 1..C; background is not counted).
    iou_threshold : a detection hits a box at IoU >= this (0.5 for VOC).
    use_07_metric : which AP goes under ``"ap"``/``"map"``: 11-point (True) or area (False). Both are
        always returned under ``ap_07``/``map_07`` and ``ap_area``/``map_area``.
    inclusive_pixels : the devkit's ``x2 - x1 + 1`` widths, for boxes in VOC's integer pixel indices
        (the last pixel included). Boxes already in continuous coordinates (pixel (r, c) covering
        [c, c+1) x [r, r+1), as minissd's datasets give them) use False and get the same overlaps.
    devkit_matching : see `match_detections`; True reproduces the devkit.
    thresholds : the 11-point AP's recall thresholds (`voc_ap`): "exact" (default), "python", "matlab" or
        "caffe". The one chosen goes under ``ap_07``/``map_07``; all four are always returned under
        ``ap_07_by_thresholds``/``map_07_by_thresholds``.

    Returns
    -------
    dict with
        ``ap`` {label: AP}, ``map`` (mean over classes with ground truth);
        ``ap_07``, ``map_07``, ``ap_area``, ``map_area`` (both kinds);
        ``num_gt`` {label: non-difficult objects}, ``num_det`` {label: detections};
        ``precision``, ``recall``, ``scores``, ``tp``, ``fp`` {label: (K,) arrays in rank order} for
        PR curves; ``iou_threshold``, ``use_07_metric``, ``thresholds``;
        ``ap_07_by_thresholds`` {convention: {label: AP}}, ``map_07_by_thresholds`` {convention: mAP}.
        A class without ground truth has AP NaN and is left out of the means (NaN if no class has any).
    """
    _check_thresholds(thresholds)
    dets, gts = _prepare(detections, ground_truths, num_classes)
    iou_threshold = float(iou_threshold)
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")

    out = {k: {} for k in ("ap_07", "ap_area", "num_gt", "num_det", "precision", "recall", "scores", "tp", "fp")}
    by_thresholds = {name: {} for name in AP_CONVENTIONS}
    for c in range(1, num_classes + 1):
        scores_c, tp_c, fp_c = [], [], []
        num_gt = 0
        for (d_boxes, d_labels, d_scores), (g_boxes, g_labels, g_diff) in zip(dets, gts, strict=True):
            gmask = g_labels == c
            num_gt += int(np.count_nonzero(gmask & ~g_diff))
            dmask = np.flatnonzero(d_labels == c)
            if dmask.size == 0:
                continue
            # Within an image, rank order = descending score, ties by detection order (stable).
            order = dmask[np.argsort(-d_scores[dmask], kind="stable")]
            tp, fp = match_detections(d_boxes[order], g_boxes[gmask], g_diff[gmask], iou_threshold,
                                      inclusive_pixels, devkit_matching)
            scores_c.append(d_scores[order])
            tp_c.append(tp)
            fp_c.append(fp)
        if scores_c:
            scores = np.concatenate(scores_c)
            # Over the dataset: stable, so equal scores keep image order, then rank within the image.
            rank = np.argsort(-scores, kind="stable")
            scores = scores[rank]
            tp = np.concatenate(tp_c)[rank]
            fp = np.concatenate(fp_c)[rank]
        else:
            scores = np.zeros(0)
            tp = fp = np.zeros(0, dtype=bool)
        # Detections on difficult boxes are neither: they stay in the list but move neither count.
        ctp = np.cumsum(tp, dtype=np.float64)
        cfp = np.cumsum(fp, dtype=np.float64)
        if num_gt > 0:
            recall = ctp / num_gt
            precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            for name in AP_CONVENTIONS:
                by_thresholds[name][c] = voc_ap(recall, precision, True, name)
            ap07, aparea = by_thresholds[thresholds][c], voc_ap(recall, precision, False)
        else:
            recall = np.full(len(scores), np.nan)
            precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            ap07 = aparea = float("nan")
            for name in AP_CONVENTIONS:
                by_thresholds[name][c] = float("nan")
        for key, val in (("ap_07", ap07), ("ap_area", aparea), ("num_gt", num_gt), ("num_det", len(scores)),
                         ("precision", precision), ("recall", recall), ("scores", scores), ("tp", tp),
                         ("fp", fp)):
            out[key][c] = val

    def mean(aps):
        vals = [v for v in aps.values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    out["map_07"] = mean(out["ap_07"])
    out["map_area"] = mean(out["ap_area"])
    out["ap_07_by_thresholds"] = by_thresholds
    out["map_07_by_thresholds"] = {name: mean(aps) for name, aps in by_thresholds.items()}
    out["thresholds"] = thresholds
    out["ap"] = dict(out["ap_07"] if use_07_metric else out["ap_area"])
    out["map"] = out["map_07"] if use_07_metric else out["map_area"]
    out["iou_threshold"] = iou_threshold
    out["use_07_metric"] = bool(use_07_metric)
    return out


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------
def _category_lookup(label_to_category):
    """A function label -> COCO category id from a mapping, a sequence, a callable, a dataset or None."""
    if label_to_category is None:
        return int
    if isinstance(label_to_category, Mapping):
        return lambda lab: int(label_to_category[int(lab)])
    if callable(label_to_category):
        return lambda lab: int(label_to_category(int(lab)))
    if isinstance(label_to_category, Sequence) and not isinstance(label_to_category, str):
        # indexed by the label itself (entry 0, background, unused), as COCODataset.label_to_category
        return lambda lab: int(label_to_category[int(lab)])
    if hasattr(label_to_category, "label_to_category"):   # a dataset that knows its COCO ids
        return _category_lookup(label_to_category.label_to_category)
    return int   # a dataset without COCO ids (shapes, VOC): the label is the category


def _coco_image_id(image_id):
    """COCO results use the integer image id; a numeric string ("139") becomes 139."""
    if isinstance(image_id, (int, np.integer)):
        return int(image_id)
    s = str(image_id)
    return int(s) if s.isdigit() else s


def coco_results(detections, image_ids, label_to_category=None) -> list:
    """Detections as COCO result records ``{image_id, category_id, bbox [x, y, w, h], score}``.

    Boxes are pixel xyxy (continuous coordinates), so ``w = x2 - x1``.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"detections has {len(detections)} images but image_ids has {len(image_ids)}")
    cat = _category_lookup(label_to_category)
    records = []
    for i, (d, image_id) in enumerate(zip(detections, image_ids, strict=True)):
        boxes, labels, scores = _fields(d, ("boxes", "labels", "scores"), "detections", i)
        boxes = _as_boxes(boxes, f"detections[{i}].boxes")
        labels = np.asarray(labels).reshape(-1)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if labels.shape != (len(boxes),) or scores.shape != (len(boxes),):
            raise ValueError(f"detections[{i}]: boxes, labels and scores must have one length")
        if not np.all(np.isfinite(scores)):   # json.dumps would write NaN, which is not JSON
            raise ValueError(f"detections[{i}].scores holds NaN or inf")
        iid = _coco_image_id(image_id)
        for b, lab, s in zip(boxes, labels, scores, strict=True):
            records.append({"image_id": iid, "category_id": cat(lab),
                            "bbox": [round(float(b[0]), 3), round(float(b[1]), 3),
                                     round(float(b[2] - b[0]), 3), round(float(b[3] - b[1]), 3)],
                            "score": round(float(s), 6)})
    return records


def write_coco_results(path, detections, image_ids, label_to_category=None) -> int:
    """Write detections in the COCO results json format; returns the number of records.

    Parameters
    ----------
    path : output file (written to a temporary file, then renamed).
    detections : list over images of (boxes (K, 4) pixel xyxy, labels (K,), scores (K,)), as for
        `evaluate_detections`.
    image_ids : list over images of the COCO image id (int, or a numeric string).
    label_to_category : {label: category_id}, a sequence indexed by the label (entry 0 unused, as
        ``COCODataset.label_to_category``), a callable, a dataset with a ``label_to_category``
        attribute, or None / a dataset without one (category id = label).
    """
    records = coco_results(detections, image_ids, label_to_category)
    write_text_atomic(path, json.dumps(records))   # complete or not at all (minissd/fileio.py)
    return len(records)


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError("COCO evaluation needs pycocotools, which is not installed: "
                          "pip install 'minissd[coco]' (or pip install pycocotools). "
                          "VOC AP (evaluate_detections) does not need it.") from err
    return COCO, COCOeval


def coco_evaluate(detections, ground_truths, image_ids=None, class_names=None, sizes=None, *,
                  num_classes: int | None = None, verbose: bool = False) -> dict:
    """COCO box AP (AP@[.5:.95], AP50, AP75, by size, and AR) through pycocotools.

    The ground truth is handed to the COCO API in memory, from the same per-image lists as
    `evaluate_detections` (pixel xyxy boxes; ``difficult`` becomes ``iscrowd``, which COCO ignores in
    the same spirit). Object areas are therefore the boxes' ``w * h``: for a COCO annotation file,
    whose ``area`` is the mask's, use `coco_evaluate_file`, which gives the official numbers (this one
    agrees on AP, AP50, AP75 and AR, not on the by-size ones). Raises ImportError naming
    ``pip install 'minissd[coco]'`` when pycocotools is missing.

    Parameters
    ----------
    detections, ground_truths : as for `evaluate_detections`.
    image_ids : optional, one per image (only used to label images; COCO gets 1..len).
    class_names : the C object class names (label i is ``class_names[i - 1]``); or give num_classes.
    sizes : optional (H, W) per image.
    verbose : print pycocotools' summary table.

    Returns
    -------
    {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"} as floats
    (NaN where COCO reports -1: no objects in that size range).
    """
    COCO, COCOeval = _require_pycocotools()
    if class_names is None and num_classes is None:
        raise ValueError("coco_evaluate: give class_names or num_classes")
    if class_names is None:
        class_names = [f"class{i}" for i in range(1, int(num_classes) + 1)]
    c = len(class_names)
    dets, gts = _prepare(detections, ground_truths, c)
    if image_ids is not None and len(image_ids) != len(gts):
        raise ValueError(f"image_ids has {len(image_ids)} entries for {len(gts)} images")
    if sizes is not None and len(sizes) != len(gts):
        raise ValueError(f"sizes has {len(sizes)} entries for {len(gts)} images")

    images, annotations = [], []
    for i, (boxes, labels, difficult) in enumerate(gts):
        img = {"id": i + 1, "file_name": str(image_ids[i]) if image_ids is not None else str(i + 1)}
        if sizes is not None:
            img["height"], img["width"] = (int(v) for v in sizes[i])
        images.append(img)
        for b, lab, dif in zip(boxes, labels, difficult, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(lab),
                                "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h,
                                "iscrowd": int(bool(dif))})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": k + 1, "name": str(n)} for k, n in enumerate(class_names)]}
    def quiet():   # pycocotools prints progress; keep stdout for the caller's own report
        return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())

    with quiet():
        gt.createIndex()
    results = coco_results(dets, list(range(1, len(dets) + 1)))
    if not results:   # the COCO API cannot load an empty result list; nothing detected is AP 0
        return {name: 0.0 for name in COCO_STAT_NAMES}
    with quiet():
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else float("nan")) for name, v in zip(COCO_STAT_NAMES, ev.stats, strict=True)}


def coco_evaluate_file(annotations, detections, image_ids, label_to_category=None, *, results_path=None,
                       verbose: bool = False) -> dict:
    """The official COCO box evaluation of detections against a COCO annotation file.

    pycocotools reads the ground truth from the file itself (its ``area``, ``iscrowd``, image ids and
    category ids), and the detections are handed over as COCO results in the file's ids, so the 12
    numbers are what pycocotools prints for the same detections. Only the images in ``image_ids`` are
    evaluated (all of the file's when they are all given), and, when ``label_to_category`` is given,
    only the categories it maps to.

    Parameters
    ----------
    annotations : path of the ``instances_*.json`` file (`COCODataset.annotations`).
    detections : list over images of (boxes (K, 4) pixel xyxy in the original image, labels (K,) in 1..C,
        scores (K,)), as for `evaluate_detections`.
    image_ids : the file's image id of each image (`COCODataset.image_ids`; numeric strings become ints).
    label_to_category : label -> category id, as for `write_coco_results` (`COCODataset.label_to_category`);
        None: the label is the category id.
    results_path : optional; also write the results json there (for the evaluation server).
    verbose : print pycocotools' summary table.

    Returns
    -------
    {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}: floats, NaN
    where COCO reports -1 (no objects of that size); 0 for every number when there is no detection.

    Raises ValueError naming an image id or category id the file does not have, ImportError when
    pycocotools is missing.
    """
    COCO, COCOeval = _require_pycocotools()
    annotations = os.fspath(annotations)
    if not os.path.exists(annotations):
        raise ValueError(f"annotations: {annotations} does not exist")
    results = coco_results(detections, image_ids, label_to_category)

    def quiet():
        return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())

    with quiet():
        gt = COCO(annotations)
    known_images = set(gt.getImgIds())
    wanted_images = {_coco_image_id(i) for i in image_ids}
    try:
        wanted_images = sorted(wanted_images)   # COCOeval's own order (it breaks score ties by it)
    except TypeError:
        wanted_images = sorted(wanted_images, key=str)
    unknown = [i for i in wanted_images if i not in known_images]
    if unknown:
        raise ValueError(f"image_ids: {unknown[0]!r} is not an image id of {annotations} "
                         f"({len(unknown)} unknown in all)")
    known_categories = set(gt.getCatIds())
    categories = sorted({r["category_id"] for r in results} | (
        set() if label_to_category is None else
        {c for c in (_category_ids(label_to_category)) if c is not None}))
    bad = [c for c in categories if c not in known_categories]
    if bad:
        raise ValueError(f"category id {bad[0]} (from label_to_category or the labels) is not a category of "
                         f"{annotations}")
    if results_path is not None:
        write_coco_results(results_path, detections, image_ids, label_to_category)
    if not results:   # the COCO API cannot load an empty result list; nothing detected is AP 0
        return {name: 0.0 for name in COCO_STAT_NAMES}
    with quiet():
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = wanted_images
        if label_to_category is not None:
            ev.params.catIds = categories
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else float("nan")) for name, v in zip(COCO_STAT_NAMES, ev.stats, strict=True)}


def _category_ids(label_to_category) -> list:
    """Every category id a label_to_category mapping/sequence/dataset names (None for entry 0)."""
    if hasattr(label_to_category, "label_to_category"):
        label_to_category = label_to_category.label_to_category
    if isinstance(label_to_category, Mapping):
        return [int(v) for v in label_to_category.values()]
    if isinstance(label_to_category, Sequence) and not isinstance(label_to_category, str):
        return [None if v is None else int(v) for v in label_to_category]
    return []

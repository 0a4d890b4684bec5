"""IoU, matching, NMS and SSD post-processing: validating wrappers over the Cython kernels.

Every function here checks its input (shape, real dtype, finite, x1 <= x2 and y1 <= y2, positive area
where a box is encoded later), raises ValueError naming the argument, converts to contiguous float64 and
handles empty input before a kernel (csrc/box_kernels.pyx) sees anything. The kernels' NumPy twins are in
reference.py.

Devices: with CuPy arrays `iou` runs on the GPU (the array-generic twin) and `nms` runs the bitmask
kernel of gpu.py; `match`, `match_batch` and `batched_detect` copy their inputs to the host, run the
host kernel, and return `match`'s results on the input's device (`batched_detect` returns NumPy: its
detections are the edge of the model).

Paper: section 2.2 "Matching strategy" (match), section 3 "Experimental results" (NMS at 0.45, top 200).
Walkthrough: docs/03-matching-and-encoding.md, docs/09-inference-and-nms.md.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from .._ext import load_extension
from ..backend import get_array_module, is_gpu_array, to_cpu
from .formats import Detections, cxcywh_to_xyxy

STRATEGIES = ("bipartite", "best_prior")

_kernels = None


def _k():
    global _kernels
    if _kernels is None:
        _kernels = load_extension("_box_kernels")
    return _kernels


# --- validation ---------------------------------------------------------------------------------------

def _as_real_array(x, name, xp=np):
    """``x`` as an array of real numbers, or ValueError naming ``name``."""
    if xp is np:
        if is_gpu_array(x):
            x = to_cpu(x)
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as err:  # ragged nested lists, unconvertible objects
            raise ValueError(f"{name} is not a rectangular array of numbers ({err})") from None
    else:
        x = xp.asarray(x)
    if x.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers (int or float), got dtype {x.dtype}")
    return x


def _check_finite(x, name, xp=np):
    if x.size and not bool(xp.all(xp.isfinite(x))):
        bad = int(xp.argmin(xp.isfinite(x).reshape(-1).astype(np.int8)))  # first False
        raise ValueError(f"{name} contains NaN or inf (flat index {bad})")


def _check_corners(x, name, xp=np, positive=False):
    """x (..., 4) xyxy: x1 <= x2 and y1 <= y2 (strict with ``positive``)."""
    if not x.size:
        return
    wh = x[..., 2:] - x[..., :2]
    ok = (wh > 0) if positive else (wh >= 0)
    if not bool(xp.all(ok)):
        bad = np.unravel_index(int(xp.argmin(xp.all(ok, axis=-1).reshape(-1).astype(np.int8))), x.shape[:-1])
        box = to_cpu(x[bad]).tolist()
        bad = bad[0] if len(bad) == 1 else tuple(int(i) for i in bad)
        if positive:
            raise ValueError(f"{name}[{bad}] = {box} has zero or negative width/height; ground-truth boxes "
                             "must have x1 < x2 and y1 < y2 (positive area) to be matched and encoded")
        raise ValueError(f"{name}[{bad}] = {box} has x2 < x1 or y2 < y1; boxes must be xyxy (x1, y1, x2, y2)")


def _boxes(x, name, ndim=2, xp=np, positive=False):
    """Validated contiguous float64 boxes of shape (n, 4) (ndim 2) or (N, P, 4) (ndim 3)."""
    x = _as_real_array(x, name, xp)
    if x.ndim != ndim or x.shape[-1] != 4:
        want = "(n, 4)" if ndim == 2 else "(N, P, 4)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    x = xp.ascontiguousarray(x, dtype=np.float64)
    _check_finite(x, name, xp)
    _check_corners(x, name, xp, positive)
    return x


def _priors(priors_cxcywh):
    p = _as_real_array(priors_cxcywh, "priors_cxcywh")
    if p.ndim != 2 or p.shape[1] != 4:
        raise ValueError(f"priors_cxcywh must have shape (P, 4), got {p.shape}")
    p = np.ascontiguousarray(p, dtype=np.float64)
    _check_finite(p, "priors_cxcywh")
    if p.size and not np.all(p[:, 2:] > 0):
        bad = int(np.argmin(np.all(p[:, 2:] > 0, axis=1)))
        raise ValueError(f"priors_cxcywh[{bad}] = {p[bad].tolist()} has zero or negative width/height")
    return p


def _labels(x, name, n):
    lab = _as_real_array(x, name)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one label per box), got {lab.shape}")
    if lab.size == 0:
        return np.zeros(0, dtype=np.int64)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise ValueError(f"{name} must hold integer class labels, got {lab.tolist()[:5]}...")
    lab = lab.astype(np.int64)
    if np.any(lab < 1):
        raise ValueError(f"{name} must be in 1..C (0 is background, kept for unmatched priors), "
                         f"got {int(lab.min())}")
    return np.ascontiguousarray(lab)


def _unit_interval(x, name, low_open=False):
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    if not ((0.0 < x) if low_open else (0.0 <= x)) or x > 1.0:
        raise ValueError(f"{name} must be in {'(0' if low_open else '[0'}, 1], got {x!r}")
    return float(x)


def _positive_int(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return int(x)


# --- IoU ----------------------------------------------------------------------------------------------

def iou(a_xyxy, b_xyxy, inclusive_pixels=False):
    """Intersection over union of every box of ``a`` with every box of ``b``: the one IoU of minissd.

    Matching, NMS, the VOC metric, the crop sampler of the augmentation and the shapes generator all
    compute their overlaps with this function (or, inside the kernels, its `_iou`).

    Parameters
    ----------
    a_xyxy : (A, 4), b_xyxy : (B, 4)
        Boxes as (x1, y1, x2, y2) with x1 <= x2, y1 <= y2, finite (ValueError naming the argument
        otherwise).
    inclusive_pixels : bool
        False (default): continuous coordinates, a box is [x1, x2] x [y1, y2] with area
        (x2 - x1) * (y2 - y1). True: the PASCAL VOC devkit's convention for integer pixel indices,
        where both ends are included: widths and heights are x2 - x1 + 1 and y2 - y1 + 1, for the
        intersection as for the areas.

    Returns
    -------
    (A, B) float64: |a ∩ b| / |a ∪ b|. NumPy in, NumPy out (Cython kernel); CuPy in, CuPy out
    (computed on the GPU by the twin `iou_ref`).

    Degenerate boxes, the one rule: the IoU is 0 when the intersection has no positive width or no
    positive height, or the union is not positive. So disjoint and touching boxes give 0, and a
    zero-area box (x1 == x2 or y1 == y2; only possible without ``inclusive_pixels``) has IoU 0 with
    every box, itself included, never 0 / 0 = NaN.
    """
    xp = get_array_module(a_xyxy, b_xyxy)
    a = _boxes(a_xyxy, "a_xyxy", xp=xp)
    b = _boxes(b_xyxy, "b_xyxy", xp=xp)
    if not isinstance(inclusive_pixels, (bool, np.bool_)):
        raise ValueError(f"inclusive_pixels must be True or False, got {inclusive_pixels!r}")
    if xp is not np:
        from .reference import iou_ref
        return iou_ref(a, b, bool(inclusive_pixels))
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    if out.size:
        _k().iou_matrix(a, b, out, bool(inclusive_pixels))
    return out


# --- matching -----------------------------------------------------------------------------------------

class PriorIndex(NamedTuple):
    """Priors arranged so the match kernel visits only the priors that overlap a ground truth.

    Built by `build_prior_index`; whoever owns the priors (the SSD model) builds it once and passes it
    to `match`/`match_batch`, which otherwise build it on every call.
    """

    priors_cxcywh: np.ndarray   # (P, 4) the priors this index was built from (a private copy)
    priors_xyxy: np.ndarray     # (P, 4)
    soa: np.ndarray             # (5, P): x1, y1, x2, y2, area of prior order[k] in column k
    order: np.ndarray           # (P,) intp: prior indices sorted by (shape, centre x, centre y, index)
    group_col: np.ndarray       # (Q + 1,) intp: group q is columns group_col[q]:group_col[q + 1]
    group_area: np.ndarray      # (Q,) w * h of group q's shape, ascending
    col_start: np.ndarray       # (R + 1,) intp: column c is sorted positions col_start[c]:col_start[c + 1]
    col_x1: np.ndarray          # (R,) x1 of column c (shared by its priors)
    col_x2: np.ndarray          # (R,)
    grouped: bool               # False: one flat list, every prior tested


def build_prior_index(priors_cxcywh, grouped=None) -> PriorIndex:
    """The index `match`/`match_batch` search: build it once per set of priors and pass it in.

    Sorts the priors by (shape (w, h), centre x, centre y, index) and marks groups and columns.
    Within a group (one shape) x1 = cx - w/2 and x2 = cx + w/2 both ascend with cx, and within a column
    (one shape and one cx) y1 and y2 ascend with cy: the match kernel binary-searches both. Default
    boxes come in few shapes on a lattice (SSD300: 30 shapes, 330 columns for 8732 boxes). When nearly
    every prior has a shape of its own (clipped or arbitrary boxes) a flat list, tested one by one, is
    cheaper. ``grouped`` forces either layout (tests); by default the cheaper one is chosen.

    ``priors_cxcywh`` (P, 4) is validated (finite, positive width and height; ValueError otherwise).
    The index holds its own copy of the priors; the matches it gives do not depend on the layout.
    """
    priors_cxcywh = _priors(priors_cxcywh)
    forced = grouped is not None
    P = priors_cxcywh.shape[0]
    xyxy = np.ascontiguousarray(cxcywh_to_xyxy(priors_cxcywh))
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    if P:
        shapes, gid = np.unique(priors_cxcywh[:, 2:], axis=0, return_inverse=True)
        by_area = np.argsort(shapes[:, 0] * shapes[:, 1], kind="stable")   # groups numbered by area
        rank = np.empty_like(by_area)
        rank[by_area] = np.arange(len(by_area))
        gid = rank[gid.reshape(-1)]
        group_area = np.ascontiguousarray((shapes[:, 0] * shapes[:, 1])[by_area])
        n_groups = len(shapes)
    else:
        gid, n_groups, group_area = np.zeros(0, dtype=np.intp), 0, np.zeros(0)
    if not forced:
        grouped = P > 0 and n_groups <= max(1, P // 16)
    if grouped:
        cx, cy = priors_cxcywh[:, 0], priors_cxcywh[:, 1]
        order = np.lexsort((np.arange(P), cy, cx, gid)).astype(np.intp)
        g_s, cx_s = gid[order], cx[order]
        new_col = np.ones(P, dtype=bool)
        new_col[1:] = (g_s[1:] != g_s[:-1]) | (cx_s[1:] != cx_s[:-1])
        col_start = np.append(np.flatnonzero(new_col), P).astype(np.intp)
        group_col = np.searchsorted(g_s[col_start[:-1]], np.arange(n_groups + 1)).astype(np.intp)
        col_x1 = np.ascontiguousarray(xyxy[order[col_start[:-1]], 0])
        col_x2 = np.ascontiguousarray(xyxy[order[col_start[:-1]], 2])
    else:
        order = np.arange(P, dtype=np.intp)
        col_start = np.array([0, P], dtype=np.intp)
        group_col = np.array([0, 1], dtype=np.intp)
        col_x1 = col_x2 = group_area = np.zeros(1)
    soa = np.ascontiguousarray(np.concatenate([xyxy[order].T, area[order][None]], axis=0))
    return PriorIndex(priors_cxcywh.copy(), xyxy, soa, order, group_col, group_area, col_start, col_x1,
                      col_x2, bool(grouped))


def _check_index(index, priors):
    """``index`` if it was built from exactly ``priors``, else ValueError (a stale index would match
    against the wrong boxes without any other sign)."""
    if not isinstance(index, PriorIndex):
        raise ValueError(f"index must be a PriorIndex from build_prior_index, got {type(index).__name__}")
    if index.priors_cxcywh.shape != priors.shape or not np.array_equal(index.priors_cxcywh, priors):
        raise ValueError(f"index was built from other priors ({index.priors_cxcywh.shape[0]} boxes) than "
                         f"priors_cxcywh ({priors.shape[0]} boxes); rebuild it with build_prior_index")
    return index


def match(priors_cxcywh, gt_xyxy, gt_labels, threshold=0.5, strategy="bipartite", index=None):
    """Assign a ground truth (or background) to every default box of one image.

    Parameters
    ----------
    priors_cxcywh : (P, 4)
    gt_xyxy : (G, 4) normalised xyxy, positive area (G may be 0: all background)
    gt_labels : (G,) int in 1..C
    threshold : float in (0, 1]; a prior with IoU >= threshold with a ground truth is positive
    strategy : "bipartite" (paper and Caffe: each ground truth first takes its best free prior, greedily
        by highest IoU) or "best_prior" (ssd.pytorch/torchvision: each ground truth is forced onto its
        argmax prior). See `match_ref` for the exact rules and tie-breaking.
    index : PriorIndex, optional
        `build_prior_index(priors_cxcywh)`, built once by the owner of the priors; without it the index
        is built on the spot (same result, slower). An index of other priors is a ValueError.

    Returns
    -------
    labels : (P,) int64, 0 = background
    matched_xyxy : (P, 4) float64: the matched ground-truth box of each positive prior; a background
        prior carries its own box, so `encode` gives ~0 there and never sees a degenerate box.

    CuPy inputs are copied to the host (the kernel runs there) and the results copied back.

    Paper: section 2.2 "Matching strategy".
    """
    labels, matched = match_batch(priors_cxcywh, [gt_xyxy], [gt_labels], threshold, strategy, index)
    return labels[0], matched[0]


def match_batch(priors_cxcywh, gt_xyxy_list, gt_labels_list, threshold=0.5, strategy="bipartite", index=None):
    """`match` for N images in one kernel call -> labels (N, P) int64, matched_xyxy (N, P, 4) float64.

    ``index``: `build_prior_index(priors_cxcywh)`, or None to build it here (see `match`).
    """
    xp = get_array_module(priors_cxcywh, *gt_xyxy_list, *gt_labels_list)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    threshold = _unit_interval(threshold, "threshold", low_open=True)
    if len(gt_xyxy_list) != len(gt_labels_list):
        raise ValueError(f"gt_xyxy_list has {len(gt_xyxy_list)} images but gt_labels_list has "
                         f"{len(gt_labels_list)}")
    priors = _priors(priors_cxcywh)
    P, N = priors.shape[0], len(gt_xyxy_list)
    gts, labs = [], []
    for n, (g, lab) in enumerate(zip(gt_xyxy_list, gt_labels_list, strict=True)):
        g = _as_real_array(g, f"gt_xyxy[{n}]")
        if g.ndim == 1 and g.size == 0:
            g = g.reshape(0, 4)  # np.array([]) for an image without objects
        if g.ndim != 2 or g.shape[1] != 4:
            raise ValueError(f"gt_xyxy[{n}] must have shape (G, 4), got {g.shape}")
        gts.append(g)
        labs.append(_labels(lab, f"gt_labels[{n}]", g.shape[0]))
    offsets = np.zeros(N + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([g.shape[0] for g in gts])
    gt = np.ascontiguousarray(np.concatenate(gts) if gts else np.zeros((0, 4)), dtype=np.float64)
    if gt.size:  # one finiteness/order check for the whole batch; the message names the image
        ok = np.all(np.isfinite(gt), axis=1) & np.all(gt[:, 2:] > gt[:, :2], axis=1)
        if not np.all(ok):
            t = int(np.argmin(ok))
            n = int(np.searchsorted(offsets, t, side="right") - 1)
            _check_finite(gt[offsets[n]:offsets[n + 1]], f"gt_xyxy[{n}]")
            _check_corners(gt[offsets[n]:offsets[n + 1]], f"gt_xyxy[{n}]", positive=True)
    gt_labels = np.ascontiguousarray(np.concatenate(labs) if labs else np.zeros(0), dtype=np.int64)
    index = build_prior_index(priors) if index is None else _check_index(index, priors)
    priors_xyxy = index.priors_xyxy
    labels = np.zeros((N, P), dtype=np.int64)
    matched = np.empty((N, P, 4), dtype=np.float64)
    if gt.shape[0] == 0 or P == 0:
        matched[:] = priors_xyxy
    else:
        _k().match_batch(priors_xyxy, index.soa, index.order, index.group_col, index.group_area,
                         index.col_start, index.col_x1, index.col_x2, index.grouped, gt, gt_labels, offsets, threshold,
                         strategy == "best_prior", labels, matched)
    if xp is not np:
        return xp.asarray(labels), xp.asarray(matched)
    return labels, matched


# --- NMS and post-processing --------------------------------------------------------------------------

def nms(boxes_xyxy, scores, iou_threshold):
    """Greedy non-maximum suppression.

    Parameters
    ----------
    boxes_xyxy : (K, 4)
    scores : (K,)
    iou_threshold : float in [0, 1]; a box is dropped when a higher-scored kept box overlaps it with
        IoU > iou_threshold (an IoU exactly at the threshold keeps it, as in Caffe and torchvision).

    Returns
    -------
    keep : (k,) int64 indices into ``boxes_xyxy``, by descending score; equal scores keep the lower index
    first (a stable sort). CuPy in: the bitmask kernel of gpu.py runs, and keep is a CuPy array.
    """
    xp = get_array_module(boxes_xyxy, scores)
    iou_threshold = _unit_interval(iou_threshold, "iou_threshold")
    boxes = _boxes(boxes_xyxy, "boxes_xyxy", xp=xp)
    s = _as_real_array(scores, "scores", xp)
    if s.ndim != 1 or s.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) (one per box), got {tuple(s.shape)}")
    s = xp.ascontiguousarray(s, dtype=np.float64)
    _check_finite(s, "scores", xp)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=np.int64)
    if xp is not np:
        from .gpu import nms_gpu
        return nms_gpu(boxes, s, iou_threshold)
    order = np.argsort(-s, kind="stable")
    keep = np.empty(len(order), dtype=np.intp)
    count = _k().nms_sorted(np.ascontiguousarray(boxes[order]), iou_threshold, keep)
    return order[keep[:count]].astype(np.int64)


def batched_detect(boxes_xyxy, probs, score_threshold=0.01, nms_threshold=0.45, pre_nms_top_k=400,
                   top_k=200):
    """SSD post-processing of a batch: per-class threshold, top-k, NMS, then the best top_k per image.

    Parameters
    ----------
    boxes_xyxy : (N, P, 4) decoded boxes (`decode` of the model's loc output)
    probs : (N, P, M) class probabilities (softmax of conf); column 0 is background and is never reported
    score_threshold : a class's box is a candidate when its probability is > this (0.01)
    nms_threshold : NMS IoU threshold in [0, 1], per class (0.45)
    pre_nms_top_k : candidates per class kept for NMS, the highest scores (400)
    top_k : detections kept per image over all classes (200)

    Returns
    -------
    list of N `Detections(boxes (K, 4) float64, labels (K,) int64 in 1..M-1, scores (K,) float64)`,
    best first, K <= top_k. Ties resolve deterministically: lower prior index within a class, lower
    class across classes. CuPy inputs are copied to the host; the results are NumPy.

    Paper: section 3 (NMS with Jaccard overlap 0.45 per class, top 200 detections per image); the
    0.01 threshold and 400 per class are the authors' Caffe test settings.
    """
    score_threshold_ok = (not isinstance(score_threshold, bool) and isinstance(score_threshold, numbers.Real)
                          and math.isfinite(score_threshold))
    if not score_threshold_ok:
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold!r}")
    nms_threshold = _unit_interval(nms_threshold, "nms_threshold")
    pre_nms_top_k = _positive_int(pre_nms_top_k, "pre_nms_top_k")
    top_k = _positive_int(top_k, "top_k")
    boxes = _boxes(boxes_xyxy, "boxes_xyxy", ndim=3)
    pr = _as_real_array(probs, "probs")
    if pr.ndim != 3 or pr.shape[:2] != boxes.shape[:2] or pr.shape[2] < 1:
        raise ValueError(f"probs must have shape (N, P, M) = ({boxes.shape[0]}, {boxes.shape[1]}, M) to match "
                         f"boxes_xyxy {boxes.shape}, got {pr.shape}")
    pr = np.ascontiguousarray(pr, dtype=np.float64)
    _check_finite(pr, "probs")
    N = boxes.shape[0]
    out_boxes = np.zeros((N, top_k, 4), dtype=np.float64)
    out_labels = np.zeros((N, top_k), dtype=np.int64)
    out_scores = np.zeros((N, top_k), dtype=np.float64)
    count = np.zeros(N, dtype=np.intp)
    if boxes.shape[1] and pr.shape[2] > 1:
        _k().detect_batch(boxes, pr, float(score_threshold), nms_threshold, pre_nms_top_k, top_k,
                          out_boxes, out_labels, out_scores, count)
    return [Detections(out_boxes[n, :count[n]].copy(), out_labels[n, :count[n]].copy(),
                       out_scores[n, :count[n]].copy()) for n in range(N)]

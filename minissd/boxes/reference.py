"""NumPy twins of the Cython box kernels: the plain statement of what each kernel computes.

The tests hold csrc/box_kernels.pyx to these on random inputs (hypothesis). They take inputs that the
wrappers in ops.py have already validated (contiguous float64, x1 <= x2, y1 <= y2, finite). `iou_ref` is
array-module generic and is also the GPU path of `iou`.

IoU is computed as in the kernels, operation for operation (areas (x2 - x1) * (y2 - y1), union =
area_a + area_b - inter), so the two agree bitwise and thresholds and ties resolve identically.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .formats import Detections, cxcywh_to_xyxy


def iou_ref(a_xyxy, b_xyxy, inclusive_pixels=False):
    """IoU of every box of ``a`` (A, 4) with every box of ``b`` (B, 4) -> (A, B).

    ``inclusive_pixels``: the VOC devkit's convention, +1 on every width and height. 0 where the
    intersection is empty or the union is not positive (a zero-area box: IoU 0 with everything).
    """
    xp = get_array_module(a_xyxy, b_xyxy)
    a, b = a_xyxy, b_xyxy
    one = 1.0 if inclusive_pixels else 0.0
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)          # (A,)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)          # (B,)
    iw = xp.maximum(xp.minimum(a[:, None, 2], b[None, :, 2]) - xp.maximum(a[:, None, 0], b[None, :, 0]) + one, 0)
    ih = xp.maximum(xp.minimum(a[:, None, 3], b[None, :, 3]) - xp.maximum(a[:, None, 1], b[None, :, 1]) + one, 0)
    inter = iw * ih                                                         # (A, B)
    union = area_a[:, None] + area_b[None, :] - inter                       # (A, B)
    ok = union > 0                                     # two zero-area boxes: IoU 0, not 0 / 0
    return xp.where(ok, inter / xp.where(ok, union, 1), 0).astype(a.dtype, copy=False)


def match_ref(priors_cxcywh, gt_xyxy, gt_labels, threshold=0.5, strategy="bipartite"):
    """Match one image's ground truths to the priors, literally as the authors' Caffe code does.

    Parameters
    ----------
    priors_cxcywh : (P, 4)
    gt_xyxy : (G, 4) with positive areas
    gt_labels : (G,) int64 in 1..C
    threshold : IoU at or above which a prior left over after the pairing takes its best ground truth
    strategy : "bipartite" (Caffe's MatchBBox: G rounds, each takes the (free prior, unpaired ground
        truth) pair of highest IoU > 0, lower prior then lower ground-truth index on ties) or
        "best_prior" (ssd.pytorch: ground truth j claims its argmax prior, lower prior index on ties,
        later j winning a prior claimed twice; only IoU > 0 counts)

    Returns
    -------
    labels : (P,) int64, 0 = background
    matched_xyxy : (P, 4): the ground-truth box of each positive prior, the prior's own box otherwise

    Paper: section 2.2 "Matching strategy".
    """
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)
    P, G = priors_xyxy.shape[0], gt_xyxy.shape[0]
    labels = np.zeros(P, dtype=np.int64)
    matched = priors_xyxy.copy()
    if G == 0:
        return labels, matched
    overlaps = iou_ref(priors_xyxy, gt_xyxy)                               # (P, G)
    assign = np.full(P, -1, dtype=np.int64)
    if strategy == "bipartite":
        free = overlaps.copy()
        for _ in range(G):
            p, j = divmod(int(np.argmax(free)), G)    # row-major argmax: lower prior, then lower gt
            if free[p, j] <= 0:
                break
            assign[p] = j
            free[p, :] = -1.0
            free[:, j] = -1.0
    elif strategy == "best_prior":
        best_prior = np.argmax(overlaps, axis=0)                            # (G,)
        for j in range(G):
            if overlaps[best_prior[j], j] > 0:
                assign[best_prior[j]] = j
    else:
        raise ValueError(f"strategy must be 'bipartite' or 'best_prior', got {strategy!r}")
    best_gt = np.argmax(overlaps, axis=1)                                   # (P,)
    best_iou = overlaps[np.arange(P), best_gt]
    rest = (assign < 0) & (best_iou >= threshold)
    assign[rest] = best_gt[rest]
    pos = assign >= 0
    labels[pos] = gt_labels[assign[pos]]
    matched[pos] = gt_xyxy[assign[pos]]
    return labels, matched


def nms_ref(boxes_xyxy, scores, iou_threshold):
    """Greedy non-maximum suppression -> indices kept, by descending score (lower index first on ties).

    Walk the boxes from the highest score down; keep a box unless a box kept before it overlaps it with
    IoU > iou_threshold.
    """
    order = np.argsort(-scores, kind="stable")
    b = boxes_xyxy[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        r = b[i + 1:]
        iw = np.maximum(np.minimum(b[i, 2], r[:, 2]) - np.maximum(b[i, 0], r[:, 0]), 0)
        ih = np.maximum(np.minimum(b[i, 3], r[:, 3]) - np.maximum(b[i, 1], r[:, 1]), 0)
        inter = iw * ih
        union = area[i] + area[i + 1:] - inter
        ok = union > 0
        iou = np.where(ok, inter / np.where(ok, union, 1), 0)
        suppressed[i + 1:] |= iou > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)].astype(np.int64)


def batched_detect_ref(boxes_xyxy, probs, score_threshold=0.01, nms_threshold=0.45, pre_nms_top_k=400,
                       top_k=200):
    """SSD post-processing, one image and one class at a time.

    For image n and class c >= 1: boxes with probs[n, :, c] > score_threshold, the pre_nms_top_k best
    (stable sort by descending score), greedy NMS; then the top_k best detections of all classes
    (stable sort of the class-by-class list by descending score).

    Returns a list of N `Detections(boxes (K, 4), labels (K,) int64, scores (K,))`.
    """
    out = []
    for bx, pr in zip(boxes_xyxy, probs, strict=True):
        dets_b, dets_l, dets_s = [], [], []
        for c in range(1, pr.shape[1]):
            s = pr[:, c]
            idx = np.nonzero(s > score_threshold)[0]
            idx = idx[np.argsort(-s[idx], kind="stable")][:pre_nms_top_k]
            keep = idx[nms_ref(bx[idx], s[idx], nms_threshold)]
            dets_b.append(bx[keep])
            dets_l.append(np.full(len(keep), c, dtype=np.int64))
            dets_s.append(s[keep])
        b = np.concatenate(dets_b) if dets_b else np.zeros((0, 4))
        lab = np.concatenate(dets_l) if dets_l else np.zeros(0, dtype=np.int64)
        sc = np.concatenate(dets_s) if dets_s else np.zeros(0)
        order = np.argsort(-sc, kind="stable")[:top_k]
        out.append(Detections(b[order].astype(np.float64), lab[order], sc[order].astype(np.float64)))
    return out

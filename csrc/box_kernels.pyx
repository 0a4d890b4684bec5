# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Box kernels on the host: IoU matrix, matching, greedy NMS, SSD post-processing, bitmask-NMS reduction.

Every function here has a NumPy twin in minissd/boxes/reference.py that states what it computes, and the
tests hold the two equal on random boxes. Only minissd/boxes/ops.py (and gpu.py) call these: the wrappers
validate shapes, finiteness and box order and make the arrays contiguous float64, so nothing here checks
its input again. The loops run without the GIL.

IoU is computed with the same operations in the same order as the twin (areas as (x2 - x1) * (y2 - y1),
union = area_a + area_b - inter), so results are bitwise equal and thresholds and ties resolve the same
way in both. Boxes are continuous coordinates; only `iou_matrix` offers the VOC devkit's "+1" pixel
convention (``one`` = 1: a box from x1 to x2 covers x2 - x1 + 1 pixels), for the VOC metric. Matching
and NMS pass ``one`` = 0, which changes nothing (x + 0.0 == x except for the sign of a zero width,
and a zero width returns 0 either way).

Degenerate boxes: the IoU is 0 whenever the intersection has no positive width or height, or the union
is not positive. A zero-area box therefore has IoU 0 with every box, itself included (never 0 / 0).
"""
import numpy as np

from libc.stdint cimport int64_t, uint64_t


cdef inline double _iou(double ax1, double ay1, double ax2, double ay2, double area_a,
                        double bx1, double by1, double bx2, double by2, double area_b,
                        double one) noexcept nogil:
    """Intersection over union of two xyxy boxes whose areas are given; 0 when they do not overlap.

    ``one``: 0 for continuous coordinates, 1 for inclusive pixel indices (then the areas must be
    (x2 - x1 + 1) * (y2 - y1 + 1), as `_area` gives them).
    """
    cdef double iw, ih, inter, uni
    iw = (ax2 if ax2 < bx2 else bx2) - (ax1 if ax1 > bx1 else bx1) + one
    if iw <= 0.0:
        return 0.0
    ih = (ay2 if ay2 < by2 else by2) - (ay1 if ay1 > by1 else by1) + one
    if ih <= 0.0:
        return 0.0
    inter = iw * ih
    uni = area_a + area_b - inter
    if uni <= 0.0:
        return 0.0
    return inter / uni


cdef inline double _area(const double[:, ::1] b, Py_ssize_t i, double one) noexcept nogil:
    return (b[i, 2] - b[i, 0] + one) * (b[i, 3] - b[i, 1] + one)


def iou_matrix(const double[:, ::1] a, const double[:, ::1] b, double[:, ::1] out, bint inclusive_pixels=False):
    """out[i, j] = IoU(a[i], b[j]). a (A, 4), b (B, 4) xyxy; out (A, B). Twin: iou_ref.

    ``inclusive_pixels``: the VOC devkit's convention (+1 on every width and height).
    """
    cdef Py_ssize_t A = a.shape[0], B = b.shape[0], i, j
    cdef double[::1] area_b = np.empty(B, dtype=np.float64)
    cdef double area_a
    cdef double one = 1.0 if inclusive_pixels else 0.0
    with nogil:
        for j in range(B):
            area_b[j] = _area(b, j, one)
        for i in range(A):
            area_a = _area(a, i, one)
            for j in range(B):
                out[i, j] = _iou(a[i, 0], a[i, 1], a[i, 2], a[i, 3], area_a,
                                 b[j, 0], b[j, 1], b[j, 2], b[j, 3], area_b[j], one)


cdef inline Py_ssize_t _first_above(const double[::1] a, Py_ssize_t lo, Py_ssize_t hi, double x) noexcept nogil:
    """First k in [lo, hi) with a[k] > x, for a non-decreasing on [lo, hi)."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef inline Py_ssize_t _first_at_least(const double[::1] a, Py_ssize_t lo, Py_ssize_t hi, double x) noexcept nogil:
    """First k in [lo, hi) with a[k] >= x, for a non-decreasing on [lo, hi)."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] >= x:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef Py_ssize_t _overlapping(const double[:, ::1] soa, const Py_ssize_t[::1] order,
                             const Py_ssize_t[::1] group_col, const double[::1] group_area,
                             const Py_ssize_t[::1] col_start, const double[::1] col_x1,
                             const double[::1] col_x2, bint grouped, const Py_ssize_t[::1] assign,
                             double threshold, double bx1, double by1, double bx2, double by2,
                             Py_ssize_t* out_k, double* out_v) noexcept nogil:
    """Sorted positions k of the priors whose IoU with box b can matter, and that IoU; returns how many.

    Priors are grouped by shape; a group is a run of columns (priors sharing centre x), columns by
    ascending x, priors in a column by ascending centre y. So in a group x1 and x2 of the columns ascend,
    and in a column y1 and y2 ascend: binary searches find the columns that overlap b in x and, in each,
    the priors that overlap it in y. Every prior skipped there has IoU exactly 0 with b.

    Groups are visited by decreasing upper bound on their IoU with b, min(area) / max(area) (groups come
    sorted by area, so two pointers walk out from b's area). Once the bound is below both the threshold
    and the best IoU found so far with a free prior (assign < 0), no later pair can be b's best free
    prior or reach the threshold, and the walk stops: the matching is that of the full IoU table.

    Without ``grouped`` (arbitrary priors) every prior is tested.
    """
    cdef Py_ssize_t q, c, c_lo, c_hi, k, k_lo, k_hi, left, right, count = 0
    cdef Py_ssize_t Q = group_col.shape[0] - 1
    cdef const double[::1] sx1 = soa[0]
    cdef const double[::1] sy1 = soa[1]
    cdef const double[::1] sx2 = soa[2]
    cdef const double[::1] sy2 = soa[3]
    cdef const double[::1] sarea = soa[4]
    cdef double ba = (bx2 - bx1) * (by2 - by1)
    cdef double v, best = 0.0, bound_l, bound_r, bound
    if not grouped:
        for k in range(sx1.shape[0]):
            if sy1[k] >= by2 or sy2[k] <= by1 or sx1[k] >= bx2 or sx2[k] <= bx1:
                continue
            v = _iou(sx1[k], sy1[k], sx2[k], sy2[k], sarea[k], bx1, by1, bx2, by2, ba, 0.0)
            out_k[count] = k
            out_v[count] = v
            count += 1
        return count
    right = _first_at_least(group_area, 0, Q, ba)
    left = right - 1
    while left >= 0 or right < Q:
        # 1 + 1e-9: the computed IoU may exceed the exact bound by rounding; never prune on a near-tie.
        bound_l = group_area[left] / ba * (1.0 + 1e-9) if left >= 0 else -1.0
        bound_r = ba / group_area[right] * (1.0 + 1e-9) if right < Q else -1.0
        if bound_l >= bound_r:
            q = left
            bound = bound_l
            left -= 1
        else:
            q = right
            bound = bound_r
            right += 1
        if bound < threshold and bound < best:
            break
        c_lo = _first_above(col_x2, group_col[q], group_col[q + 1], bx1)
        c_hi = _first_at_least(col_x1, c_lo, group_col[q + 1], bx2)
        for c in range(c_lo, c_hi):
            k_lo = _first_above(sy2, col_start[c], col_start[c + 1], by1)
            k_hi = _first_at_least(sy1, k_lo, col_start[c + 1], by2)
            for k in range(k_lo, k_hi):
                v = _iou(sx1[k], sy1[k], sx2[k], sy2[k], sarea[k], bx1, by1, bx2, by2, ba, 0.0)
                out_k[count] = k
                out_v[count] = v
                count += 1
                if v > best and assign[order[k]] < 0:
                    best = v
    return count


def match_batch(const double[:, ::1] priors, const double[:, ::1] soa, const Py_ssize_t[::1] order,
                const Py_ssize_t[::1] group_col, const double[::1] group_area,
                const Py_ssize_t[::1] col_start, const double[::1] col_x1, const double[::1] col_x2,
                bint grouped,
                const double[:, ::1] gt, const int64_t[::1] gt_labels,
                const int64_t[::1] offsets, double threshold, bint force_best_prior,
                int64_t[:, ::1] labels_out, double[:, :, ::1] matched_out):
    """Match the priors of N images to their ground truths. Twin: match_ref (one image at a time).

    priors (P, 4) xyxy; gt (T, 4) xyxy with positive areas, image n's boxes are
    gt[offsets[n]:offsets[n + 1]]; gt_labels (T,) >= 1; labels_out (N, P); matched_out (N, P, 4).
    The index (soa (5, P): x1, y1, x2, y2, area of prior order[k] in column k; group_col; group_area;
    col_start; col_x1; col_x2; grouped; built by ops._prior_index) lets `_overlapping` visit only the
    pairs that overlap and can matter.

    Bipartite (Caffe's MatchBBox): repeatedly take the (ground truth, free prior) pair of highest IoU
    (> 0; ties: lower prior index, then lower ground-truth index) until every ground truth has a prior.
    Instead of rescanning the G x P table in each of the G rounds, every unpaired ground truth keeps its
    best free prior; when a round takes that prior, only the ground truths that wanted it look again.
    The same pairs, in O(G P) instead of O(G^2 P) in the usual case.

    Best prior (ssd.pytorch): ground truth j, in order, claims its argmax prior (IoU > 0, lower index
    on ties; a later j wins a prior claimed twice).

    Then, for both, every prior left over takes its best ground truth (lower index on ties) when that
    IoU >= threshold. A background prior carries its own box as matched box, so encoding it gives ~0.
    """
    cdef Py_ssize_t P = priors.shape[0], N = offsets.shape[0] - 1
    cdef Py_ssize_t n, p, j, r, bj, g0, G, i, cnt, gmax = 1
    for n in range(N):
        gmax = max(gmax, offsets[n + 1] - offsets[n])
    cdef double[::1] best_iou = np.empty(P, dtype=np.float64)
    cdef Py_ssize_t[::1] best_gt = np.empty(P, dtype=np.intp)
    cdef Py_ssize_t[::1] assign = np.empty(P, dtype=np.intp)
    cdef Py_ssize_t[::1] hit_k = np.empty(P, dtype=np.intp)
    cdef double[::1] hit_v = np.empty(P, dtype=np.float64)
    cdef double[::1] gbest = np.empty(gmax, dtype=np.float64)
    cdef Py_ssize_t[::1] gbest_p = np.empty(gmax, dtype=np.intp)
    cdef unsigned char[::1] gdone = np.empty(gmax, dtype=np.uint8)
    cdef double v
    with nogil:
        for n in range(N):
            g0 = offsets[n]
            G = offsets[n + 1] - g0
            for p in range(P):
                assign[p] = -1
                best_iou[p] = -1.0
                best_gt[p] = 0
            # Each prior's best ground truth and each ground truth's best prior, from overlapping pairs.
            for j in range(G):
                gbest[j] = 0.0       # only IoU > 0 pairs a ground truth with a prior
                gbest_p[j] = -1
                gdone[j] = 0
                cnt = _overlapping(soa, order, group_col, group_area, col_start, col_x1, col_x2, grouped,
                                   assign, threshold, gt[g0 + j, 0], gt[g0 + j, 1], gt[g0 + j, 2], gt[g0 + j, 3],
                                   &hit_k[0], &hit_v[0])
                for i in range(cnt):
                    v = hit_v[i]
                    p = order[hit_k[i]]
                    if v > best_iou[p]:      # j ascends, so strict > keeps the lower j on ties
                        best_iou[p] = v
                        best_gt[p] = j
                    if v > gbest[j] or (v == gbest[j] and v > 0.0 and p < gbest_p[j]):
                        gbest[j] = v
                        gbest_p[j] = p
            if force_best_prior:
                for j in range(G):
                    if gbest_p[j] >= 0:
                        assign[gbest_p[j]] = j
            else:
                for r in range(G):
                    bj = -1
                    for j in range(G):
                        if gdone[j] or gbest_p[j] < 0:
                            continue
                        if (bj < 0 or gbest[j] > gbest[bj]
                                or (gbest[j] == gbest[bj] and gbest_p[j] < gbest_p[bj])):
                            bj = j
                    if bj < 0:
                        break        # the ground truths left overlap no free prior
                    assign[gbest_p[bj]] = bj
                    gdone[bj] = 1
                    for j in range(G):
                        if gdone[j] or gbest_p[j] != gbest_p[bj]:
                            continue
                        # Its best prior was just taken: find its best free prior.
                        gbest[j] = 0.0
                        gbest_p[j] = -1
                        cnt = _overlapping(soa, order, group_col, group_area, col_start, col_x1, col_x2,
                                           grouped, assign, threshold,
                                           gt[g0 + j, 0], gt[g0 + j, 1], gt[g0 + j, 2], gt[g0 + j, 3],
                                           &hit_k[0], &hit_v[0])
                        for i in range(cnt):
                            v = hit_v[i]
                            p = order[hit_k[i]]
                            if assign[p] >= 0:
                                continue
                            if v > gbest[j] or (v == gbest[j] and v > 0.0 and p < gbest_p[j]):
                                gbest[j] = v
                                gbest_p[j] = p
            for p in range(P):
                j = assign[p]
                if j < 0 and best_iou[p] >= threshold:
                    j = best_gt[p]
                if j >= 0:
                    labels_out[n, p] = gt_labels[g0 + j]
                    matched_out[n, p, 0] = gt[g0 + j, 0]
                    matched_out[n, p, 1] = gt[g0 + j, 1]
                    matched_out[n, p, 2] = gt[g0 + j, 2]
                    matched_out[n, p, 3] = gt[g0 + j, 3]
                else:
                    labels_out[n, p] = 0
                    matched_out[n, p, 0] = priors[p, 0]
                    matched_out[n, p, 1] = priors[p, 1]
                    matched_out[n, p, 2] = priors[p, 2]
                    matched_out[n, p, 3] = priors[p, 3]


# --- a bounded heap of (score, key) pairs: keeps the best `cap`, ranks by score, then lower key ----------

cdef inline bint _worse(double sa, Py_ssize_t ka, double sb, Py_ssize_t kb) noexcept nogil:
    """(sa, ka) ranks below (sb, kb): lower score, or the same score and a higher key."""
    return sa < sb or (sa == sb and ka > kb)


cdef inline void _sift_down(double* hs, Py_ssize_t* hk, Py_ssize_t n, Py_ssize_t pos,
                            double s, Py_ssize_t k) noexcept nogil:
    """Put (s, k) at pos of a heap of size n whose root is its worst element, moving it down."""
    cdef Py_ssize_t c
    while True:
        c = 2 * pos + 1
        if c >= n:
            break
        if c + 1 < n and _worse(hs[c + 1], hk[c + 1], hs[c], hk[c]):
            c += 1
        if _worse(s, k, hs[c], hk[c]):
            break
        hs[pos] = hs[c]
        hk[pos] = hk[c]
        pos = c
    hs[pos] = s
    hk[pos] = k


cdef inline void _heap_offer(double* hs, Py_ssize_t* hk, Py_ssize_t* n, Py_ssize_t cap,
                             double s, Py_ssize_t k) noexcept nogil:
    """Offer (s, k) to a heap holding the best `cap` pairs seen so far."""
    cdef Py_ssize_t pos, parent
    if n[0] < cap:
        pos = n[0]
        n[0] += 1
        while pos > 0:
            parent = (pos - 1) // 2
            if _worse(hs[parent], hk[parent], s, k):
                break
            hs[pos] = hs[parent]
            hk[pos] = hk[parent]
            pos = parent
        hs[pos] = s
        hk[pos] = k
    elif _worse(hs[0], hk[0], s, k):
        _sift_down(hs, hk, n[0], 0, s, k)


cdef inline void _heap_sort_best_first(double* hs, Py_ssize_t* hk, Py_ssize_t n) noexcept nogil:
    """Sort a heap in place, best first (the same order as a stable sort by descending score)."""
    cdef Py_ssize_t end, k
    cdef double s
    end = n - 1
    while end > 0:
        s = hs[end]
        k = hk[end]
        hs[end] = hs[0]
        hk[end] = hk[0]
        _sift_down(hs, hk, end, 0, s, k)
        end -= 1


# --- greedy NMS ----------------------------------------------------------------------------------------

def nms_sorted(const double[:, ::1] boxes, double threshold, Py_ssize_t[::1] keep):
    """Greedy NMS of boxes already sorted by descending score. Twin: nms_ref.

    Box i is kept unless a kept box before it overlaps it with IoU > threshold. Writes the kept
    positions (ascending) to keep[:count] and returns count.

    The definition read backwards: each box in turn is tested against the boxes kept so far (copied to
    contiguous columns), stopping at the first that suppresses it. A suppressed box usually meets its
    suppressor, the best box of its crowd, among the first kept; the twin's order (each kept box
    against all later boxes) tested 2-3x more pairs on crowded boxes in benchmarks/boxes.py.
    """
    cdef Py_ssize_t K = boxes.shape[0], i, a, q, count = 0
    cdef double[::1] area = np.empty(max(K, 1), dtype=np.float64)
    cdef double[::1] work = np.empty(5 * max(K, 1), dtype=np.float64)
    cdef double* x1 = &work[0]
    cdef double* y1 = &work[0] + K
    cdef double* x2 = &work[0] + 2 * K
    cdef double* y2 = &work[0] + 3 * K
    cdef double* ar = &work[0] + 4 * K
    cdef double bx1, by1, bx2, by2, ba
    cdef bint sup
    if K == 0:
        return 0
    with nogil:
        for i in range(K):
            bx1 = boxes[i, 0]
            by1 = boxes[i, 1]
            bx2 = boxes[i, 2]
            by2 = boxes[i, 3]
            ba = (bx2 - bx1) * (by2 - by1)
            sup = False
            for a in range(count):
                if _iou(x1[a], y1[a], x2[a], y2[a], ar[a], bx1, by1, bx2, by2, ba, 0.0) > threshold:
                    sup = True
                    break
            if sup:
                continue
            keep[count] = i
            x1[count] = bx1
            y1[count] = by1
            x2[count] = bx2
            y2[count] = by2
            ar[count] = ba
            count += 1
    return count


def top_k_sorted(const double[::1] scores, Py_ssize_t k):
    """Indices of the k best scores, best first, lower index first on ties (for tests of the heap)."""
    cdef Py_ssize_t n = scores.shape[0], i, size = 0
    cdef double[::1] hs = np.empty(max(k, 1), dtype=np.float64)
    cdef Py_ssize_t[::1] hk = np.empty(max(k, 1), dtype=np.intp)
    if k <= 0:
        return np.empty(0, dtype=np.intp)
    with nogil:
        for i in range(n):
            _heap_offer(&hs[0], &hk[0], &size, k, scores[i], i)
        _heap_sort_best_first(&hs[0], &hk[0], size)
    return np.asarray(hk[:size]).copy()


def detect_batch(const double[:, :, ::1] boxes, const double[:, :, ::1] probs, double score_threshold,
                 double nms_threshold, Py_ssize_t pre_nms_top_k, Py_ssize_t top_k,
                 double[:, :, ::1] out_boxes, int64_t[:, ::1] out_labels, double[:, ::1] out_scores,
                 Py_ssize_t[::1] out_count):
    """SSD post-processing of N images. Twin: batched_detect_ref.

    boxes (N, P, 4) xyxy; probs (N, P, M) with class 0 background. Per image and class c >= 1: the
    boxes with score > score_threshold, the best pre_nms_top_k of them (score, then lower prior index),
    greedy NMS at nms_threshold; then the best top_k of all classes (score, then class, then rank in
    class). out_boxes (N, top_k, 4), out_labels (N, top_k), out_scores (N, top_k), out_count (N,).

    Greedy NMS keeps a box exactly when no kept box of its class with a better rank overlaps it by more
    than the threshold. So the candidates of all classes are walked together, best first (a merge of the
    per-class lists, ordered as the final sort orders them), each tested against the boxes kept so far
    in its class, until top_k are kept: the boxes the final cut would drop are never tested. Candidates
    are mostly far apart, so most are kept and the walk ends after about top_k of them.
    """
    cdef Py_ssize_t N = boxes.shape[0], P = boxes.shape[1], M = probs.shape[2], C = M - 1
    cdef Py_ssize_t n, p, c, a, q, bc, r, nfin, kc
    cdef Py_ssize_t cap = max(pre_nms_top_k, 1), kcap = max(min(pre_nms_top_k, top_k), 1)
    cdef double[::1] area = np.empty(max(P, 1), dtype=np.float64)
    cdef double[:, ::1] hs = np.empty((max(C, 1), cap), dtype=np.float64)
    cdef Py_ssize_t[:, ::1] hk = np.empty((max(C, 1), cap), dtype=np.intp)
    cdef Py_ssize_t[::1] hn = np.empty(max(C, 1), dtype=np.intp)
    cdef Py_ssize_t[::1] head = np.empty(max(C, 1), dtype=np.intp)       # next rank to look at, per class
    cdef Py_ssize_t[:, ::1] kept = np.empty((max(C, 1), kcap), dtype=np.intp)   # kept priors, per class
    cdef Py_ssize_t[::1] nkept = np.empty(max(C, 1), dtype=np.intp)
    cdef double s, bx1, by1, bx2, by2, ba
    cdef bint suppressed
    if top_k <= 0 or pre_nms_top_k <= 0 or C <= 0 or P == 0:
        out_count[:] = 0
        return
    with nogil:
        for n in range(N):
            for c in range(C):
                hn[c] = 0
                head[c] = 0
                nkept[c] = 0
            # Prior-major scan: reads probs[n] once, in memory order.
            for p in range(P):
                area[p] = (boxes[n, p, 2] - boxes[n, p, 0]) * (boxes[n, p, 3] - boxes[n, p, 1])
                for c in range(C):
                    s = probs[n, p, c + 1]
                    if s > score_threshold:
                        _heap_offer(&hs[c, 0], &hk[c, 0], &hn[c], cap, s, p)
            for c in range(C):
                _heap_sort_best_first(&hs[c, 0], &hk[c, 0], hn[c])
            nfin = 0
            while nfin < top_k:
                # the best head over classes: higher score, then lower class
                bc = -1
                for c in range(C):
                    if head[c] < hn[c] and (bc < 0 or hs[c, head[c]] > hs[bc, head[bc]]):
                        bc = c
                if bc < 0:
                    break
                r = head[bc]
                head[bc] += 1
                p = hk[bc, r]
                bx1 = boxes[n, p, 0]
                by1 = boxes[n, p, 1]
                bx2 = boxes[n, p, 2]
                by2 = boxes[n, p, 3]
                ba = area[p]
                suppressed = False
                for a in range(nkept[bc]):
                    q = kept[bc, a]
                    # the kept box first, as in the twin (_iou is symmetric anyway)
                    if _iou(boxes[n, q, 0], boxes[n, q, 1], boxes[n, q, 2], boxes[n, q, 3], area[q],
                            bx1, by1, bx2, by2, ba, 0.0) > nms_threshold:
                        suppressed = True
                        break
                if suppressed:
                    continue
                kept[bc, nkept[bc]] = p
                nkept[bc] += 1
                out_boxes[n, nfin, 0] = bx1
                out_boxes[n, nfin, 1] = by1
                out_boxes[n, nfin, 2] = bx2
                out_boxes[n, nfin, 3] = by2
                out_labels[n, nfin] = bc + 1
                out_scores[n, nfin] = hs[bc, r]
                nfin += 1
            out_count[n] = nfin


def nms_reduce_bitmask(const uint64_t[:, ::1] mask, Py_ssize_t[::1] keep):
    """Greedy NMS from a suppression bitmask (the host half of the GPU NMS). Twin: nms_ref.

    mask (K, W), W = ceil(K / 64): bit b of mask[i, w] says that box i (sorted by descending score)
    overlaps box 64 w + b > i with IoU > threshold. Walks the boxes in order, keeps a box no kept box
    suppresses and ORs its row into the running "removed" bits. Writes keep[:count], returns count.
    """
    cdef Py_ssize_t K = mask.shape[0], W = mask.shape[1], i, w, count = 0
    cdef uint64_t[::1] removed = np.zeros(max(W, 1), dtype=np.uint64)
    cdef uint64_t one = 1
    with nogil:
        for i in range(K):
            if (removed[i // 64] >> (i % 64)) & one:
                continue
            keep[count] = i
            count += 1
            for w in range(i // 64, W):
                removed[w] |= mask[i, w]
    return count

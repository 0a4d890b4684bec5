"""Box formats, encode/decode (eq. (2)), IoU by hand, matching rules, NMS and batched_detect behaviour."""
import math

import numpy as np
import pytest

from minissd.boxes import (
    Detections,
    batched_detect,
    cxcywh_to_xyxy,
    decode,
    encode,
    iou,
    match,
    match_batch,
    match_ref,
    nms,
    xyxy_to_cxcywh,
)
from minissd.priors import make_priors

# --- formats ------------------------------------------------------------------------------------------

def test_format_round_trip(rng, xp):
    b = rng.random((3, 5, 4))
    b[..., 2:] += b[..., :2]
    x = xp.asarray(b)
    c = xyxy_to_cxcywh(x)
    np.testing.assert_allclose(to_np(c[..., :2]), (b[..., :2] + b[..., 2:]) / 2)
    np.testing.assert_allclose(to_np(c[..., 2:]), b[..., 2:] - b[..., :2])
    np.testing.assert_allclose(to_np(cxcywh_to_xyxy(c)), b, atol=1e-15)


def test_format_integers_become_float():
    out = xyxy_to_cxcywh(np.array([[0, 0, 2, 4]]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[1, 2, 2, 4]])


def test_format_bad_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        xyxy_to_cxcywh(np.zeros((3, 5)))


def to_np(a):
    from minissd.backend import to_cpu
    return to_cpu(a)


# --- encode / decode ----------------------------------------------------------------------------------

def test_encode_by_hand():
    priors = np.array([[0.5, 0.5, 0.2, 0.4]])                 # cxcywh
    gt = np.array([[0.42, 0.38, 0.62, 0.78],                  # cxcywh (0.52, 0.58, 0.2, 0.4)
                   [0.3, 0.3, 0.7, 0.7]])                     # cxcywh (0.5, 0.5, 0.4, 0.4)
    t = encode(gt[:, None, :], priors)                        # (2, 1, 4)
    # t_cx = 0.02 / (0.1 * 0.2) = 1, t_cy = 0.08 / (0.1 * 0.4) = 2, t_w = log(1) / 0.2 = 0, t_h = 0
    np.testing.assert_allclose(t[0, 0], [1, 2, 0, 0], atol=1e-12)
    # t_w = log(0.4 / 0.2) / 0.2 = 5 log 2, t_h = log(1) / 0.2 = 0
    np.testing.assert_allclose(t[1, 0], [0, 0, 5 * math.log(2), 0], atol=1e-12)
    # variances (1, 1) is the paper's eq. (2) as printed
    np.testing.assert_allclose(encode(gt[:1], priors, (1, 1)), [[0.1, 0.2, 0, 0]], atol=1e-12)


def test_encode_decode_inverse(rng, xp):
    priors = xp.asarray(make_priors("small"))
    P = priors.shape[0]
    g = rng.random((2, P, 4)) * 0.5
    g[..., 2:] += g[..., :2] + 0.01
    g = xp.asarray(g)
    loc = encode(g, priors)
    assert loc.shape == (2, P, 4)
    np.testing.assert_allclose(to_np(decode(loc, priors)), to_np(g), atol=1e-12)
    # and the other way round
    t = xp.asarray(rng.standard_normal((P, 4)))
    np.testing.assert_allclose(to_np(encode(decode(t, priors), priors)), to_np(t), atol=1e-9)


def test_encode_keeps_float32():
    priors = make_priors("small").astype(np.float32)
    g = cxcywh_to_xyxy(priors)
    assert encode(g, priors).dtype == np.float32
    assert decode(np.zeros_like(priors), priors).dtype == np.float32
    assert decode(np.zeros(priors.shape, np.float32), make_priors("small")).dtype == np.float64


def test_encode_rejects_zero_area_gt():
    priors = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]])
    g = np.array([[0.1, 0.1, 0.3, 0.3], [0.2, 0.2, 0.2, 0.5]])   # second: zero width
    with pytest.raises(ValueError, match="zero or negative width"):
        encode(g, priors)


@pytest.mark.parametrize("fn", [encode, decode])
def test_coder_bad_input(fn):
    priors = np.array([[0.5, 0.5, 0.2, 0.2]])
    good = np.array([[0.4, 0.4, 0.6, 0.6]])
    with pytest.raises(ValueError, match=r"\(\.\.\., P, 4\)"):
        fn(np.zeros((2, 4)), priors)
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(np.array([[0.4, np.nan, 0.6, 0.6]]), priors)
    with pytest.raises(ValueError, match="priors_cxcywh"):
        fn(good, np.array([[0.5, 0.5, 0.0, 0.2]]))
    with pytest.raises(ValueError, match="variances"):
        fn(good, priors, (0.1, -0.2))
    with pytest.raises(ValueError, match="real numbers"):
        fn(good.astype(complex), priors)


# --- IoU by hand --------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, expected", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),          # inter 1, union 4 + 4 - 1 = 7
    ([0, 0, 1, 1], [0.5, 0, 1.5, 1], 1 / 3),      # inter 1/2, union 3/2
    ([0, 0, 3, 1], [1, 0, 2, 2], 1 / 4),          # inter 1, union 3 + 2 - 1 = 4
    ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16),         # contained: 1 / 16
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),            # identical
    ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),            # touching edges: no area in common
    ([0, 0, 1, 1], [2, 2, 3, 3], 0.0),            # disjoint
    ([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5], 0.0),    # a point inside: zero area, IoU 0
    ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 0.0),  # two zero-area boxes: 0, not 0 / 0
])
def test_iou_by_hand(a, b, expected, xp):
    A, B = xp.asarray(np.array([a], float)), xp.asarray(np.array([b], float))
    assert to_np(iou(A, B))[0, 0] == pytest.approx(expected, abs=1e-15)
    assert to_np(iou(B, A))[0, 0] == pytest.approx(expected, abs=1e-15)


def test_iou_shapes_and_empty():
    a = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [5, 5, 6, 6]], float)
    out = iou(a, a[:2])
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, [[1, 1 / 4], [1 / 4, 1], [0, 0]])
    assert iou(np.zeros((0, 4)), a).shape == (0, 3)
    assert iou(a, np.zeros((0, 4))).shape == (3, 0)
    assert iou([[0, 0, 1, 1]], [[0, 0, 1, 1]])[0, 0] == 1.0        # lists and ints are coerced


# --- matching -----------------------------------------------------------------------------------------

def test_match_threshold_boundary():
    # prior 0 = [0, 0, 1/2, 1] (the gt exactly), prior 1 = [0, 0, 1, 1]: IoU(gt, prior 1) = (1/2) / 1
    priors = np.array([[0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]])
    gt = np.array([[0.0, 0.0, 0.5, 1.0]])
    assert iou(cxcywh_to_xyxy(priors), gt)[1, 0] == 0.5
    labels, matched = match(priors, gt, [3], threshold=0.5)
    np.testing.assert_array_equal(labels, [3, 3])                   # IoU exactly at 0.5 is positive
    np.testing.assert_array_equal(matched, [gt[0], gt[0]])
    labels, _ = match(priors, gt, [3], threshold=0.5 + 1e-9)
    np.testing.assert_array_equal(labels, [3, 0])                   # just past it is not
    # and a ground truth a hair narrower: IoU = (1/2 - 1e-9) / 1 < 1/2
    labels, _ = match(priors, np.array([[0.0, 0.0, 0.5 - 1e-9, 1.0]]), [3], threshold=0.5)
    np.testing.assert_array_equal(labels, [3, 0])


def test_strategies_differ_when_two_gts_share_a_best_prior():
    # p0 = [0, 0, 1, 1], p1 = [0.5, 0, 1.3, 1]; gt1 = [0, 0, 1, 0.9], gt2 = [0, 0, 0.8, 1]
    priors = np.array([[0.5, 0.5, 1.0, 1.0], [0.9, 0.5, 0.8, 1.0]])
    gts = np.array([[0, 0, 1, 0.9], [0, 0, 0.8, 1]])
    ov = iou(cxcywh_to_xyxy(priors), gts)
    # IoU(p0, gt1) = 9/10, IoU(p0, gt2) = 8/10, IoU(p1, gt1) = 0.45 / 1.25 = 9/25, IoU(p1, gt2) = 0.3 / 1.3 = 3/13
    np.testing.assert_allclose(ov, [[9 / 10, 8 / 10], [9 / 25, 3 / 13]], atol=1e-12)
    lab_bi, m_bi = match(priors, gts, [1, 2], strategy="bipartite")
    lab_bp, _ = match(priors, gts, [1, 2], strategy="best_prior")
    # bipartite: gt1 takes p0 (0.9 is the best pair), gt2 takes its best free prior p1 (3/13 < 0.5)
    np.testing.assert_array_equal(lab_bi, [1, 2])
    np.testing.assert_array_equal(m_bi, gts)
    # best prior: both claim p0, the later gt wins, gt1 is left without a prior
    np.testing.assert_array_equal(lab_bp, [2, 0])


def test_every_gt_gets_a_prior_and_background_keeps_its_box(rng):
    priors = make_priors("small")
    xy = rng.random((12, 2)) * 0.8
    gts = np.concatenate([xy, xy + 0.02 + rng.random((12, 2)) * 0.18], axis=1)   # 12 small objects
    labels, matched = match(priors, gts, np.arange(1, 13))
    for j in range(12):
        hit = np.all(matched == gts[j], axis=1) & (labels == j + 1)
        assert hit.any(), f"ground truth {j} has no prior"
    bg = labels == 0
    assert bg.sum() > 1000
    np.testing.assert_allclose(matched[bg], cxcywh_to_xyxy(priors[bg]))
    np.testing.assert_allclose(encode(matched[bg], priors[bg]), 0, atol=1e-12)


def test_tiny_gt_still_gets_a_prior_but_only_with_bipartite_or_best_prior():
    priors = make_priors("ssd300")
    gt = np.array([[0.5, 0.5, 0.505, 0.505]])                      # 1.5 px: IoU < 0.5 with every prior
    ov = iou(cxcywh_to_xyxy(priors), gt)
    assert ov.max() < 0.5
    for strategy in ("bipartite", "best_prior"):
        labels, _ = match(priors, gt, [7], strategy=strategy)
        assert labels.sum() == 7 and labels[np.argmax(ov[:, 0])] == 7


def test_match_empty_and_batch(rng):
    priors = make_priors("small")
    labels, matched = match(priors, np.zeros((0, 4)), np.zeros(0, np.int64))
    assert labels.shape == (1524,) and not labels.any()
    labels, matched = match(priors, np.array([]), np.array([]))          # plain empty lists work too
    assert not labels.any()
    gts = [np.array([[0.1, 0.1, 0.5, 0.6]]), np.zeros((0, 4)), np.array([[0.5, 0.5, 0.9, 0.9], [0, 0, 1, 1]])]
    labs = [np.array([2]), np.zeros(0, np.int64), np.array([1, 4])]
    L, M = match_batch(priors, gts, labs)
    assert L.shape == (3, 1524) and M.shape == (3, 1524, 4) and L.dtype == np.int64
    assert not L[1].any()
    for n in range(3):
        l1, m1 = match_ref(priors, gts[n], labs[n])
        np.testing.assert_array_equal(L[n], l1)
        np.testing.assert_array_equal(M[n], m1)
    L0, M0 = match_batch(priors, [], [])
    assert L0.shape == (0, 1524) and M0.shape == (0, 1524, 4)


@pytest.mark.parametrize("kwargs, word", [
    ({"gt_xyxy": np.array([[0.1, 0.1, 0.1, 0.5]])}, "positive area"),
    ({"gt_xyxy": np.array([[0.5, 0.1, 0.1, 0.5]])}, "positive area"),
    ({"gt_xyxy": np.array([[0.1, 0.1, np.inf, 0.5]])}, "NaN or inf"),
    ({"gt_xyxy": np.zeros((1, 5))}, r"\(G, 4\)"),
    ({"gt_labels": [0]}, "1..C"),
    ({"gt_labels": [1.5]}, "integer"),
    ({"gt_labels": [1, 2]}, "one label per box"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"strategy": "hungarian"}, "strategy"),
    ({"priors_cxcywh": np.array([[0.5, 0.5, -0.1, 0.2]])}, "priors_cxcywh"),
])
def test_match_bad_input(kwargs, word):
    args = {"priors_cxcywh": make_priors("small"), "gt_xyxy": np.array([[0.1, 0.1, 0.4, 0.5]]),
            "gt_labels": [1], "threshold": 0.5, "strategy": "bipartite"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        match(**args)


def test_match_batch_names_the_bad_image():
    priors = make_priors("small")
    gts = [np.array([[0.1, 0.1, 0.4, 0.5]]), np.array([[0.1, 0.1, 0.4, 0.5], [0.3, 0.3, 0.2, 0.6]])]
    with pytest.raises(ValueError, match=r"gt_xyxy\[1\]\[1\]"):
        match_batch(priors, gts, [[1], [1, 2]])
    with pytest.raises(ValueError, match="2 images"):
        match_batch(priors, gts, [[1]])


# --- NMS ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("delta, kept", [(-1e-6, [0, 1]), (0.0, [0, 1]), (1e-6, [0])])
def test_nms_at_threshold(delta, kept, xp):
    # A = [0, 0, 1, 1]; B = [0, 0, w, 1] inside it: IoU(A, B) = w / 1 = w. w = 0.45 + delta.
    boxes = xp.asarray(np.array([[0, 0, 1, 1], [0, 0, 0.45 + delta, 1]]))
    scores = xp.asarray(np.array([0.9, 0.8]))
    assert to_np(iou(boxes[:1], boxes[1:]))[0, 0] == pytest.approx(0.45 + delta, abs=1e-15)
    np.testing.assert_array_equal(to_np(nms(boxes, scores, 0.45)), kept)


def test_nms_by_hand():
    boxes = np.array([[0, 0, 1, 1],        # 0: score 0.5
                      [0, 0, 1, 0.9],      # 1: score 0.9, IoU with 0 = 9/10
                      [2, 2, 3, 3],        # 2: score 0.7, alone
                      [0.5, 0, 1.5, 1],    # 3: score 0.6, IoU with 1 = 0.45 / 1.45 = 9/29 < 1/2
                      ])
    scores = np.array([0.5, 0.9, 0.7, 0.6])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 2, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.31), [1, 2])     # 9/29 = 0.3103 > 0.31
    np.testing.assert_array_equal(nms(boxes, scores, 0.32), [1, 2, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 1.0), [1, 2, 3, 0])
    assert nms(boxes, scores, 0.5).dtype == np.int64


def test_nms_ties_keep_lower_index_first():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 6, 6], [5, 5, 6, 6]], float)
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 2])
    np.testing.assert_array_equal(nms(boxes, np.array([0.4, 0.5, 0.5, 0.5]), 0.5), [1, 2])


def test_nms_empty():
    keep = nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


# --- batched_detect -----------------------------------------------------------------------------------

def _probs(rng, N, P, M, background=4.0):
    logits = rng.standard_normal((N, P, M))
    logits[..., 0] += background
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_batched_detect_contract(rng):
    priors = make_priors("small")
    N, P, M = 3, priors.shape[0], 5
    boxes = decode(rng.standard_normal((N, P, 4)) * 0.5, priors)
    probs = _probs(rng, N, P, M)
    dets = batched_detect(boxes, probs, top_k=50)
    assert len(dets) == N
    for d, b, p in zip(dets, boxes, probs, strict=True):
        assert isinstance(d, Detections)
        K = len(d.scores)
        assert 0 < K <= 50 and d.boxes.shape == (K, 4) and d.labels.dtype == np.int64
        assert np.all(np.diff(d.scores) <= 0)                          # best first
        assert d.labels.min() >= 1 and d.labels.max() <= M - 1          # never background
        assert np.all(d.scores > 0.01)
        # every detection is a (box, class) of the input with its probability
        for box, lab, s in zip(d.boxes, d.labels, d.scores, strict=True):
            i = np.flatnonzero(np.all(b == box, axis=1))
            assert np.any(p[i, lab] == s)
        # per class, no two kept boxes overlap more than the NMS threshold
        for c in np.unique(d.labels):
            bc = d.boxes[d.labels == c]
            ov = iou(bc, bc) - np.eye(len(bc))
            assert ov.max(initial=0) <= 0.45


def test_batched_detect_thresholds_and_top_k():
    # two boxes of class 1 that overlap (IoU 9/10), one of class 2, one below the score threshold
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 0.9], [2, 2, 3, 3], [4, 4, 5, 5]]], float)
    probs = np.array([[[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7], [0.995, 0.005, 0.0]]])
    d = batched_detect(boxes, probs)[0]
    np.testing.assert_array_equal(d.labels, [1, 2])
    np.testing.assert_allclose(d.scores, [0.9, 0.7])
    np.testing.assert_array_equal(d.boxes, boxes[0, [0, 2]])
    d = batched_detect(boxes, probs, nms_threshold=0.95)[0]             # 9/10 < 0.95: both kept
    np.testing.assert_array_equal(d.labels, [1, 1, 2])
    d = batched_detect(boxes, probs, nms_threshold=0.95, top_k=2)[0]
    np.testing.assert_allclose(d.scores, [0.9, 0.8])
    d = batched_detect(boxes, probs, nms_threshold=0.95, pre_nms_top_k=1)[0]   # one candidate per class
    np.testing.assert_allclose(d.scores, [0.9, 0.7])
    d = batched_detect(boxes, probs, score_threshold=0.004)[0]          # the 0.005 box comes in
    np.testing.assert_allclose(d.scores, [0.9, 0.7, 0.005])


def test_batched_detect_empty():
    assert batched_detect(np.zeros((0, 10, 4)), np.zeros((0, 10, 3))) == []
    d = batched_detect(np.zeros((2, 0, 4)), np.zeros((2, 0, 3)))
    assert len(d) == 2 and d[0].boxes.shape == (0, 4) and d[0].labels.dtype == np.int64
    d = batched_detect(np.tile([[[0, 0, 1, 1.0]]], (1, 5, 1)), np.full((1, 5, 3), 0.001))
    assert len(d[0].scores) == 0


@pytest.mark.parametrize("kwargs, word", [
    ({"probs": np.zeros((1, 4, 3))[:, :3]}, "probs"),
    ({"probs": np.full((1, 4, 3), np.nan)}, "NaN"),
    ({"boxes_xyxy": np.zeros((4, 4))}, r"\(N, P, 4\)"),
    ({"boxes_xyxy": np.array([[[1, 0, 0, 1.0]] * 4])}, "x2 < x1"),
    ({"score_threshold": float("nan")}, "score_threshold"),
    ({"nms_threshold": 1.2}, "nms_threshold"),
    ({"pre_nms_top_k": 0}, "pre_nms_top_k"),
    ({"top_k": 2.5}, "top_k"),
])
def test_batched_detect_bad_input(kwargs, word):
    args = {"boxes_xyxy": np.tile([[[0, 0, 1, 1.0]]], (1, 4, 1)), "probs": np.full((1, 4, 3), 1 / 3)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        batched_detect(**args)

"""The Cython box kernels equal their NumPy twins (hypothesis), bad input never reaches them, CPU == GPU.

Random boxes are drawn either on a coarse grid (coordinates in eighths, so IoUs tie, boxes touch and
scores repeat: the tie-breaking rules are exercised) or continuous.
"""
import numpy as np
import pytest

from conftest import HealthCheck, example, given, gpu, settings, st
from minissd._ext import load_extension
from minissd.boxes import (
    batched_detect,
    batched_detect_ref,
    build_prior_index,
    encode,
    iou,
    iou_ref,
    match,
    match_batch,
    match_ref,
    nms,
    nms_ref,
    ops,
    xyxy_to_cxcywh,
)
from minissd.boxes.gpu import nms_bitmask_ref
from minissd.priors import make_priors

K = load_extension("_box_kernels")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_boxes(rng, n, grid, positive=False):
    """(n, 4) xyxy boxes in [0, 1]; on a 1/8 grid when ``grid`` (ties, shared edges, zero areas)."""
    if grid:
        p = rng.integers(0, 9, (n, 4)) / 8
    else:
        p = rng.random((n, 4))
    x1, x2 = np.minimum(p[:, 0], p[:, 2]), np.maximum(p[:, 0], p[:, 2])
    y1, y2 = np.minimum(p[:, 1], p[:, 3]), np.maximum(p[:, 1], p[:, 3])
    if positive:  # ground truths: positive area
        x2 = np.where(x2 > x1, x2, x1 + 1 / 8)
        y2 = np.where(y2 > y1, y2, y1 + 1 / 8)
    return np.stack([x1, y1, x2, y2], axis=1)


def random_scores(rng, n, grid):
    return rng.integers(0, 5, n) / 4 if grid else rng.random(n)


seeds = st.integers(0, 2**32 - 1)


@SETTINGS
@given(seed=seeds, a=st.integers(0, 40), b=st.integers(0, 40), grid=st.booleans())
def test_iou_kernel_equals_twin(seed, a, b, grid):
    rng = np.random.default_rng(seed)
    A, B = random_boxes(rng, a, grid), random_boxes(rng, b, grid)
    got, want = iou(A, B), iou_ref(A, B)
    assert got.shape == (a, b)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got, want)          # same operations in the same order: bitwise
    assert np.all((got >= 0) & (got <= 1))


def pixel_boxes(rng, n, grid):
    """(n, 4) xyxy boxes in pixels: integer indices (ties, shared edges, x1 == x2) or continuous."""
    if grid:
        p = rng.integers(0, 12, (n, 4)).astype(float)
    else:
        p = rng.random((n, 4)) * 40
    return np.concatenate([np.minimum(p[:, :2], p[:, 2:]), np.maximum(p[:, :2], p[:, 2:])], axis=1)


def devkit_iou(a, b):
    """The VOC devkit's overlap (VOCevaldet.m), one pair at a time: both end pixels count."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


@SETTINGS
@given(seed=seeds, a=st.integers(0, 30), b=st.integers(0, 30), grid=st.booleans())
def test_iou_inclusive_pixels_kernel_equals_twin_and_the_devkit(seed, a, b, grid):
    rng = np.random.default_rng(seed)
    A, B = pixel_boxes(rng, a, grid), pixel_boxes(rng, b, grid)
    got, want = iou(A, B, inclusive_pixels=True), iou_ref(A, B, inclusive_pixels=True)
    assert got.shape == (a, b)
    np.testing.assert_array_equal(got, want)
    loop = np.array([[devkit_iou(x, y) for y in B] for x in A]).reshape(a, b)
    np.testing.assert_array_equal(got, loop)           # the devkit's formula, bit for bit
    assert np.all((got >= 0) & (got <= 1))


@SETTINGS
@given(seed=seeds, n=st.integers(1, 20), inclusive=st.booleans())
def test_iou_degenerate_boxes_follow_the_one_rule(seed, n, inclusive):
    # A box with x1 == x2 or y1 == y2 has no area: IoU 0 with every box, itself included (never NaN).
    # With inclusive_pixels it covers one column/row of pixels and is an ordinary box.
    rng = np.random.default_rng(seed)
    B = pixel_boxes(rng, n, True)
    flat = B.copy()
    flat[:, 2] = flat[:, 0]                            # zero width
    flat[::2, 3] = flat[::2, 1]                        # and every other one zero height too
    for other in (B, flat):
        got, want = iou(flat, other, inclusive), iou_ref(flat, other, inclusive)
        np.testing.assert_array_equal(got, want)
        assert np.all(np.isfinite(got))
        if not inclusive:
            assert not np.any(got)
    if inclusive:
        np.testing.assert_array_equal(np.diag(iou(flat, flat, True)), 1.0)   # a 1-pixel-wide box is itself
    touching = np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([[1.0, 0.0, 2.0, 1.0]])
    assert iou(*touching)[0, 0] == 0.0                 # a shared edge is no overlap...
    assert iou(*touching, inclusive_pixels=True)[0, 0] == 2 / 6   # ...but one shared pixel column


def test_iou_checks_its_input():
    with pytest.raises(ValueError, match="inclusive_pixels must be True or False"):
        iou(np.zeros((1, 4)), np.zeros((1, 4)), inclusive_pixels="yes")
    with pytest.raises(ValueError, match=r"b_xyxy\[0\].*x2 < x1"):
        iou(np.zeros((1, 4)), np.array([[2.0, 0, 1, 1]]), inclusive_pixels=True)


@SETTINGS
@given(seed=seeds, n=st.integers(0, 120), grid=st.booleans(),
       thr=st.sampled_from([0.0, 0.3, 0.45, 0.5, 0.7, 1.0]))
def test_nms_kernel_equals_twin(seed, n, grid, thr):
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, n, grid), random_scores(rng, n, grid)
    keep = nms(boxes, scores, thr)
    np.testing.assert_array_equal(keep, nms_ref(boxes, scores, thr))
    # the definition, checked directly: kept boxes pairwise <= thr, every dropped box > thr with a kept one
    # that scores higher or ties with a lower index
    if n:
        ov = iou(boxes[keep], boxes[keep]) - np.eye(len(keep))
        assert ov.max(initial=0) <= thr
        dropped = np.setdiff1d(np.arange(n), keep)
        if len(dropped):
            assert np.all(iou(boxes[dropped], boxes[keep]).max(axis=1) > thr)


@SETTINGS
@given(seed=seeds, n=st.integers(0, 200), grid=st.booleans(),
       thr=st.sampled_from([0.0, 0.3, 0.45, 0.5, 1.0]))
def test_bitmask_nms_equals_greedy(seed, n, grid, thr):
    # The host half of the GPU NMS on the NumPy twin of the CUDA mask kernel gives nms_ref's keep list.
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, n, grid), random_scores(rng, n, grid)
    order = np.argsort(-scores, kind="stable")
    mask = nms_bitmask_ref(boxes[order], thr)
    assert mask.shape == (n, (n + 63) // 64) and mask.dtype == np.uint64
    keep = np.empty(n, dtype=np.intp)
    count = K.nms_reduce_bitmask(np.ascontiguousarray(mask), keep)
    np.testing.assert_array_equal(order[keep[:count]], nms_ref(boxes, scores, thr))


@SETTINGS
@given(seed=seeds, n=st.integers(0, 300), k=st.integers(0, 50), grid=st.booleans())
def test_top_k_heap_equals_stable_sort(seed, n, k, grid):
    rng = np.random.default_rng(seed)
    s = random_scores(rng, n, grid)
    np.testing.assert_array_equal(K.top_k_sorted(s, k), np.argsort(-s, kind="stable")[:k])


@SETTINGS
@given(seed=seeds, p=st.integers(1, 60), g=st.integers(0, 12), grid=st.booleans(),
       thr=st.sampled_from([0.1, 0.5, 0.7, 1.0]), strategy=st.sampled_from(["bipartite", "best_prior"]))
def test_match_kernel_equals_twin_on_arbitrary_priors(seed, p, g, grid, thr, strategy):
    rng = np.random.default_rng(seed)
    priors = xyxy_to_cxcywh(random_boxes(rng, p, grid, positive=True))
    gt = random_boxes(rng, g, grid, positive=True)
    if g > 2 and rng.random() < 0.3:
        gt[1] = gt[0]                                 # duplicate objects: two gts want the same prior
    labels = rng.integers(1, 4, g)
    want = match_ref(priors, gt, labels, thr, strategy)
    got = match(priors, gt, labels, thr, strategy)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("name", ["small", "ssd300"])
@SETTINGS
@given(seed=seeds, n=st.integers(1, 4), smax=st.sampled_from([0.05, 0.3, 1.0]),
       thr=st.sampled_from([0.3, 0.5]), strategy=st.sampled_from(["bipartite", "best_prior"]))
def test_match_batch_equals_twin_on_default_boxes(name, seed, n, smax, thr, strategy):
    # Default boxes take the grouped path (binary searches and the area bound); the twin sees the full table.
    priors = make_priors(name)
    index = build_prior_index(priors)
    assert index.grouped
    rng = np.random.default_rng(seed)
    gts, labs = [], []
    for _ in range(n):
        g = int(rng.integers(0, 15))
        xy = rng.random((g, 2)) * (1 - smax)
        b = np.concatenate([xy, xy + 1e-3 + rng.random((g, 2)) * smax], axis=1)
        if g > 2:
            b[2] = b[1]
        gts.append(b)
        labs.append(rng.integers(1, 21, g))
    L, M = match_batch(priors, gts, labs, thr, strategy, index=index)
    L0, M0 = match_batch(priors, gts, labs, thr, strategy)      # the index built on the spot: the same
    np.testing.assert_array_equal(L, L0)
    np.testing.assert_array_equal(M, M0)
    for i in range(n):
        lr, mr = match_ref(priors, gts[i], labs[i], thr, strategy)
        np.testing.assert_array_equal(L[i], lr)
        np.testing.assert_array_equal(M[i], mr)


def test_match_grouped_and_flat_layouts_agree(rng):
    priors = make_priors("small")
    xy = rng.random((30, 2)) * 0.7
    gt = np.concatenate([xy, xy + 0.01 + rng.random((30, 2)) * 0.3], axis=1)
    labels = rng.integers(1, 5, 30)
    idx_flat = build_prior_index(priors, grouped=False)
    assert not idx_flat.grouped
    out = {}
    for grouped in (True, False):
        ix = build_prior_index(priors, grouped=grouped)
        L = np.zeros((1, len(priors)), np.int64)
        M = np.zeros((1, len(priors), 4))
        K.match_batch(ix.priors_xyxy, ix.soa, ix.order, ix.group_col, ix.group_area, ix.col_start, ix.col_x1,
                      ix.col_x2, ix.grouped, gt, labels, np.array([0, 30]), 0.5, False, L, M)
        out[grouped] = (L, M)
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_array_equal(out[True][1], out[False][1])
    assert (out[True][0] > 0).sum() >= 30


def detect_inputs(seed, n, p, m, grid):
    """(n, p, 4) boxes and (n, p, m) probabilities; on the grid the probabilities are quarters."""
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n * p, grid).reshape(n, p, 4)
    probs = (rng.integers(0, 5, (n, p, m)) / 4) if grid else rng.random((n, p, m))
    return boxes, probs


# Fixed examples at the threshold edges (checked by test_batched_detect_examples_sit_on_the_edges):
# seed 64 draws a pair of class-1 candidates at IoU exactly 0.45 and probabilities exactly 0.0 at
# score_threshold 0.0; seed 37 draws IoU-0.45 pairs and probabilities exactly 0.25 at score_threshold 0.25.
DETECT_EDGES = [dict(seed=64, n=1, p=8, m=2, grid=True, pre=400, top=200, score_thr=0.0, nms_thr=0.45),
                dict(seed=37, n=2, p=12, m=3, grid=True, pre=400, top=200, score_thr=0.25, nms_thr=0.45)]


@SETTINGS
@given(seed=seeds, n=st.integers(1, 3), p=st.integers(1, 80), m=st.integers(1, 5), grid=st.booleans(),
       pre=st.sampled_from([1, 5, 400]), top=st.sampled_from([1, 7, 200]),
       score_thr=st.sampled_from([0.0, 0.01, 0.3]), nms_thr=st.sampled_from([0.0, 0.45, 1.0]))
@example(**DETECT_EDGES[0])
@example(**DETECT_EDGES[1])
def test_batched_detect_kernel_equals_twin(seed, n, p, m, grid, pre, top, score_thr, nms_thr):
    boxes, probs = detect_inputs(seed, n, p, m, grid)
    kw = dict(score_threshold=score_thr, nms_threshold=nms_thr, pre_nms_top_k=pre, top_k=top)
    got, want = batched_detect(boxes, probs, **kw), batched_detect_ref(boxes, probs, **kw)
    assert len(got) == len(want) == n
    for d, r in zip(got, want, strict=True):
        np.testing.assert_array_equal(d.labels, r.labels)
        np.testing.assert_array_equal(d.scores, r.scores)
        np.testing.assert_array_equal(d.boxes, r.boxes)


@pytest.mark.parametrize("edge", DETECT_EDGES, ids=["score_thr=0.0", "score_thr=0.25"])
def test_batched_detect_examples_sit_on_the_edges(edge):
    # The fixed examples above keep testing the edges only while their draws really sit on them: a
    # candidate pair at IoU == nms_thr and a probability == score_thr, each changing the output when
    # the threshold moves by one ulp (a box at IoU == threshold is kept, a score == threshold is not).
    boxes, probs = detect_inputs(edge["seed"], edge["n"], edge["p"], edge["m"], edge["grid"])
    s_thr, n_thr = edge["score_thr"], edge["nms_thr"]
    pairs = 0
    for i in range(edge["n"]):
        for c in range(1, edge["m"]):
            cand = np.flatnonzero(probs[i, :, c] > s_thr)
            pairs += int(np.triu(iou(boxes[i, cand], boxes[i, cand]) == n_thr, 1).sum())
    assert pairs > 0
    assert np.any(probs[..., 1:] == s_thr)

    def count(score_threshold, nms_threshold):
        dets = batched_detect(boxes, probs, score_threshold=score_threshold, nms_threshold=nms_threshold,
                              pre_nms_top_k=edge["pre"], top_k=edge["top"])
        return sum(len(d.scores) for d in dets)
    assert count(s_thr, n_thr) > count(s_thr, np.nextafter(n_thr, 0))
    assert count(s_thr, n_thr) < count(np.nextafter(s_thr, -1), n_thr)


# --- bad input never reaches a kernel -----------------------------------------------------------------

BAD_BOXES = [
    ("shape (3,)", np.zeros(3)),
    ("shape (2, 5)", np.zeros((2, 5))),
    ("shape (2, 4, 1)", np.zeros((2, 4, 1))),
    ("NaN", np.array([[0, 0, np.nan, 1.0]])),
    ("inf", np.array([[0, 0, np.inf, 1.0]])),
    ("-inf", np.array([[-np.inf, 0, 1, 1.0]])),
    ("x2 < x1", np.array([[0.5, 0, 0.4, 1.0]])),
    ("y2 < y1", np.array([[0, 0.5, 1, 0.4]])),
    ("strings", np.array([["a", "b", "c", "d"]])),
    ("complex", np.zeros((1, 4), complex)),
    ("objects", np.array([[None, 0, 1, 1]], dtype=object)),
    ("ragged", [[0, 0, 1, 1], [0, 0, 1]]),
    ("bool", np.ones((1, 4), bool)),
]


@pytest.mark.parametrize("what, bad", BAD_BOXES, ids=[w for w, _ in BAD_BOXES])
def test_bad_boxes_raise_valueerror(what, bad):
    good = np.array([[0, 0, 1, 1.0]])
    with pytest.raises(ValueError, match="a_xyxy"):
        iou(bad, good)
    with pytest.raises(ValueError, match="b_xyxy"):
        iou(good, bad)
    with pytest.raises(ValueError, match="boxes_xyxy"):
        nms(bad, np.zeros(len(bad)), 0.5)
    with pytest.raises(ValueError, match="gt_xyxy"):
        match(make_priors("small"), bad, [1])
    with pytest.raises(ValueError, match="boxes_xyxy"):
        batched_detect(bad if what == "ragged" else np.asarray(bad)[None], np.zeros((1, 1, 3)))


@SETTINGS
@given(seed=seeds, n=st.integers(1, 20), where=st.integers(0, 10**6),
       value=st.sampled_from([np.nan, np.inf, -np.inf, "invert"]))
def test_fuzz_one_bad_value_raises(seed, n, where, value):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, n, False, positive=True)
    i = where % n
    if value == "invert":
        boxes[i, [0, 2]] = boxes[i, 2] + 0.1, boxes[i, 0]
    else:
        boxes[i, where % 4] = value
    scores = rng.random(n)
    for call in (lambda: iou(boxes, boxes[:1]), lambda: nms(boxes, scores, 0.5),
                 lambda: match(make_priors("small"), boxes, np.ones(n, int)),
                 lambda: encode(boxes, make_priors("small")[:n]),
                 lambda: batched_detect(boxes[None], np.full((1, n, 2), 0.5))):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("bad", [np.array([0.5, np.nan]), np.array([[0.5, 0.5]]), np.array([0.5]),
                                 np.array(["a", "b"])])
def test_nms_bad_scores(bad):
    with pytest.raises(ValueError, match="scores"):
        nms(np.array([[0, 0, 1, 1], [0, 0, 1, 1.0]]), bad, 0.5)


@pytest.mark.parametrize("thr", [-0.1, 1.1, float("nan"), "0.5", None, True])
def test_nms_bad_threshold(thr):
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(np.array([[0, 0, 1, 1.0]]), np.array([1.0]), thr)


def test_inputs_are_not_modified_and_non_contiguous_ok(rng):
    big = random_boxes(rng, 40, False)
    a = big[::2]                                      # a strided view
    a_copy = a.copy()
    s = rng.random(20)
    np.testing.assert_array_equal(nms(a, s, 0.5), nms_ref(a_copy, s, 0.5))
    np.testing.assert_array_equal(iou(a, a), iou_ref(a_copy, a_copy))
    np.testing.assert_array_equal(a, a_copy)
    f32 = a.astype(np.float32)                        # float32 and int inputs are coerced to float64
    assert iou(f32, f32).dtype == np.float64
    assert iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]]))[0, 0] == pytest.approx(1 / 7)


# --- CPU == GPU (runs where CuPy and a GPU are present) -----------------------------------------------

@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("grid", [False, True])
def test_gpu_nms_equals_cpu_on_thousands_of_boxes(grid):
    import cupy as cp
    rng = np.random.default_rng(7)
    for n in (1, 63, 64, 65, 3000):
        boxes = random_boxes(rng, n, grid) * 0.5 + rng.random((n, 1)) * 0.5   # many overlaps
        scores = random_scores(rng, n, grid)
        for thr in (0.3, 0.45, 0.7):
            keep_gpu = nms(cp.asarray(boxes), cp.asarray(scores), thr)
            assert isinstance(keep_gpu, cp.ndarray)
            np.testing.assert_array_equal(cp.asnumpy(keep_gpu), nms(boxes, scores, thr))


@gpu
@pytest.mark.gpu
def test_gpu_iou_coder_and_match_equal_cpu():
    import cupy as cp

    from minissd.boxes import decode
    rng = np.random.default_rng(8)
    a, b = random_boxes(rng, 3000, False), random_boxes(rng, 500, True)
    np.testing.assert_allclose(cp.asnumpy(iou(cp.asarray(a), cp.asarray(b))), iou(a, b), atol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(iou(cp.asarray(a * 50), cp.asarray(b * 50), inclusive_pixels=True)),
                               iou(a * 50, b * 50, inclusive_pixels=True), atol=1e-12)
    priors = make_priors("ssd300")
    loc = rng.standard_normal((2, len(priors), 4))
    np.testing.assert_allclose(cp.asnumpy(decode(cp.asarray(loc), cp.asarray(priors))),
                               decode(loc, priors), atol=1e-12)
    g = random_boxes(rng, 20, False, positive=True)
    lab = rng.integers(1, 21, 20)
    L, M = match(cp.asarray(priors), cp.asarray(g), cp.asarray(lab))
    assert isinstance(L, cp.ndarray)
    Lc, Mc = match(priors, g, lab)
    np.testing.assert_array_equal(cp.asnumpy(L), Lc)
    np.testing.assert_array_equal(cp.asnumpy(M), Mc)
    np.testing.assert_allclose(cp.asnumpy(encode(cp.asarray(Mc), cp.asarray(priors))), encode(Mc, priors),
                               atol=1e-12)


def test_prior_index_passed_in_or_built_on_the_spot(rng):
    # No module-level cache: each call either gets the owner's index or builds one; alternating sets of
    # priors, with and without an index, all match as the twin does.
    gt = random_boxes(rng, 6, False, positive=True)
    labels = np.arange(1, 7)
    a = make_priors("small")
    b = a.copy()
    b[:, :2] = 1 - b[:, :2]                     # same shapes, mirrored centres
    c = make_priors("ssd300")
    indexes = {id(p): build_prior_index(p) for p in (a, b, c)}
    for priors in (a, b, a, c, b):
        want = match_ref(priors, gt, labels)
        for index in (None, indexes[id(priors)]):
            got = match(priors, gt, labels, index=index)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    assert not hasattr(ops, "_last_index")


def test_a_stale_prior_index_is_refused(rng):
    gt = random_boxes(rng, 3, False, positive=True)
    a = make_priors("small")
    index = build_prior_index(a)
    b = a.copy()
    b[0, 0] += 1e-3                             # one prior moved: the index no longer describes them
    with pytest.raises(ValueError, match="index was built from other priors"):
        match(b, gt, [1, 2, 3], index=index)
    with pytest.raises(ValueError, match="index was built from other priors"):
        match_batch(make_priors("ssd300"), [gt], [[1, 2, 3]], index=index)
    with pytest.raises(ValueError, match="index must be a PriorIndex"):
        match_batch(a, [gt], [[1, 2, 3]], index="an index")
    a[0, 0] += 1e-3                             # the index holds its own copy: editing the priors is noticed
    with pytest.raises(ValueError, match="index was built from other priors"):
        match(a, gt, [1, 2, 3], index=index)
    with pytest.raises(ValueError, match=r"priors_cxcywh\[0\].*zero or negative width"):
        build_prior_index(np.array([[0.5, 0.5, 0.0, 0.1]]))

"""Tests added after mutation testing of minissd/boxes/{coder,ops,formats}.py (tests/mutation/boxes.md):
each kills mutants that survived tests/test_boxes.py and tests/test_box_kernels.py."""
import numpy as np
import pytest

from conftest import gpu
from minissd.boxes import (
    batched_detect,
    build_prior_index,
    cxcywh_to_xyxy,
    decode,
    encode,
    iou,
    match,
    match_batch,
    nms,
    ops,
    xyxy_to_cxcywh,
)
from minissd.priors import make_priors

PRIOR = np.array([[0.5, 0.5, 0.2, 0.4]])            # one default box, cxcywh
GT = np.array([[0.42, 0.38, 0.62, 0.78]])           # xyxy, positive area


# -- coder: variances, the names in the messages, dtypes, the index of a bad box -------------------------
@pytest.mark.parametrize("fn", [encode, decode])
@pytest.mark.parametrize("variances", [(0.0, 0.2), (0.1, 0.0)])
def test_a_zero_variance_is_refused(fn, variances):
    """Each variance divides a target: zero is refused as well as negative."""
    with pytest.raises(ValueError, match="variances must be positive"):
        fn(GT, PRIOR, variances)


@pytest.mark.parametrize("fn, name", [(encode, "matched_xyxy"), (decode, "loc")])
def test_coder_messages_name_the_bad_argument(fn, name):
    """A bad first argument is named by its parameter name; bad priors are named priors_cxcywh."""
    with pytest.raises(ValueError, match=f"^{name} must hold real numbers"):
        fn(GT.astype(complex), PRIOR)
    with pytest.raises(ValueError, match=rf"^{name} must have shape \(\.\.\., P, 4\)"):
        fn(np.zeros((2, 4)), PRIOR)
    with pytest.raises(ValueError, match=f"^{name} contains NaN"):
        fn(np.array([[0.4, np.nan, 0.6, 0.6]]), PRIOR)
    with pytest.raises(ValueError, match="^priors_cxcywh must hold real numbers"):
        fn(GT, PRIOR.astype(complex))


@pytest.mark.parametrize("fn", [encode, decode])
@pytest.mark.parametrize("priors", [np.zeros((1, 5)) + 0.5, np.zeros((1, 4, 4)) + 0.5, np.zeros(4) + 0.5])
def test_coder_refuses_priors_of_the_wrong_shape(fn, priors):
    """priors_cxcywh must be (P, 4): a wrong column count or an extra or missing axis is refused as such."""
    with pytest.raises(ValueError, match=r"^priors_cxcywh must have shape \(P, 4\)"):
        fn(GT, priors)


@pytest.mark.parametrize("fn", [encode, decode])
@pytest.mark.parametrize("x_dtype, p_dtype, want", [
    (np.float16, np.float16, np.float32),      # half precision is computed in float32, never kept in half
    (np.float64, np.float32, np.float64),      # float64 boxes with float32 priors: float64
    (np.float32, np.float64, np.float64),
    (np.int16, np.float32, np.float64),        # integers make the result float64 even beside float32
    (np.int64, np.float32, np.float64),
    (np.float32, np.int16, np.float64),
    (np.float32, np.float32, np.float32),
])
def test_coder_result_dtype(fn, x_dtype, p_dtype, want):
    """The result dtype: float32 stays float32, float64 or any integer input gives float64."""
    x = np.array([[0, 0, 1, 2]], dtype=x_dtype)
    p = np.array([[1, 1, 2, 2]], dtype=p_dtype)
    assert fn(x, p).dtype == want


@pytest.mark.skipif(np.finfo(np.longdouble).eps == np.finfo(np.float64).eps, reason="longdouble is float64 here")
@pytest.mark.parametrize("fn", [encode, decode])
def test_coder_keeps_extended_precision_priors(fn):
    """Integer boxes with longdouble priors are computed in longdouble: the promotion never narrows."""
    out = fn(np.array([[0, 0, 1, 2]]), np.array([[1, 1, 2, 2]], dtype=np.longdouble))
    assert out.dtype == np.longdouble


def test_encode_names_the_flat_index_of_a_zero_area_box():
    """The message of a zero-area ground truth gives its index in the flattened (..., P) boxes."""
    priors = np.tile(PRIOR, (3, 1))                                    # P = 3
    g = np.tile(GT, (2, 3, 1))                                         # (2, 3, 4)
    g[1, 2, 2] = g[1, 2, 0]                                            # image 1, prior 2: zero width
    with pytest.raises(ValueError, match=r"\(flat box index 5\)"):
        encode(g, priors)
    g = np.tile(GT, (2, 3, 1))
    g[0, 1, 3] = g[0, 1, 1] - 0.1                                      # image 0, prior 1: negative height
    with pytest.raises(ValueError, match=r"\(flat box index 1\)"):
        encode(g, priors)


# -- formats ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn, name", [(xyxy_to_cxcywh, "b (xyxy)"), (cxcywh_to_xyxy, "b (cxcywh)")])
def test_formats_name_their_argument_and_take_a_single_box(fn, name):
    """A scalar is refused with the argument's name; one box of shape (4,) is converted like a row."""
    for bad in (np.float64(1.0), np.zeros((2, 3))):
        with pytest.raises(ValueError, match=rf"^{re_escape(name)} must have shape \(\.\.\., 4\)"):
            fn(bad)
    with pytest.raises(ValueError, match=rf"^{re_escape(name)} must hold real numbers"):
        fn(np.zeros(4, complex))
    np.testing.assert_array_equal(fn(np.array([0, 0, 2, 4])), fn(np.array([[0, 0, 2, 4]]))[0])


def re_escape(s):
    import re
    return re.escape(s)


# -- the kernel module is loaded on first use ----------------------------------------------------------------
def test_kernels_are_loaded_on_first_use(monkeypatch):
    """With no kernel module loaded yet, the first call loads _box_kernels and keeps it."""
    monkeypatch.setattr(ops, "_kernels", None)
    assert iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)
    assert ops._kernels is not None and ops._kernels.__name__.endswith("_box_kernels")
    first = ops._kernels
    nms(np.array([[0, 0, 1, 1.0]]), np.array([1.0]), 0.5)
    assert ops._kernels is first


# -- the messages name the argument (anchored: the name starts the message) ----------------------------------
GOOD = np.array([[0, 0, 1, 1.0]])


@pytest.mark.parametrize("call, message", [
    (lambda: iou(np.zeros((1, 5)), GOOD), r"^a_xyxy must have shape \(n, 4\), got \(1, 5\)"),
    (lambda: iou(GOOD, np.zeros((1, 5))), r"^b_xyxy must have shape \(n, 4\), got \(1, 5\)"),
    (lambda: nms(np.zeros(4), np.zeros(1), 0.5), r"^boxes_xyxy must have shape \(n, 4\), got \(4,\)"),
    (lambda: nms(GOOD, np.array(["a"]), 0.5), "^scores must hold real numbers"),
    (lambda: nms(GOOD, np.array([np.nan]), 0.5), r"^scores contains NaN or inf \(flat index 0\)"),
    (lambda: nms(GOOD, np.array([1.0]), 1.5), r"^iou_threshold must be in \[0, 1\]"),
    (lambda: match(make_priors("small"), GOOD, [1], threshold=0.0), r"^threshold must be in \(0, 1\]"),
    (lambda: match(np.array([["a"] * 4]), GOOD, [1]), "^priors_cxcywh must hold real numbers"),
    (lambda: match(np.zeros((2, 5)) + 0.5, GOOD, [1]), r"^priors_cxcywh must have shape \(P, 4\)"),
    (lambda: match(np.array([[0.5, np.inf, 0.1, 0.1]]), GOOD, [1]), r"^priors_cxcywh contains NaN or inf"),
    (lambda: match_batch(make_priors("small"), [GOOD, GOOD], [[1], ["a"]]), r"^gt_labels\[1\] must hold real"),
    (lambda: match_batch(make_priors("small"), [GOOD, GOOD], [[1], [1, 2]]), r"^gt_labels\[1\] must have shape"),
    (lambda: match_batch(make_priors("small"), [GOOD, GOOD], [[1], [0]]), r"^gt_labels\[1\] must be in 1\.\.C"),
    (lambda: batched_detect(np.zeros((4, 4)), np.zeros((4, 4, 2))), r"^boxes_xyxy must have shape \(N, P, 4\)"),
    (lambda: batched_detect(GOOD[None], np.array([[["a", "b"]]])), "^probs must hold real numbers"),
    (lambda: batched_detect(GOOD[None], np.array([[[0.5, np.nan]]])), r"^probs contains NaN or inf \(flat index 1\)"),
    (lambda: batched_detect(GOOD[None], np.ones((1, 1, 2)), nms_threshold=2.0), r"^nms_threshold must be in"),
    (lambda: batched_detect(GOOD[None], np.ones((1, 1, 2)), pre_nms_top_k=0), "^pre_nms_top_k must be a positive"),
    (lambda: batched_detect(GOOD[None], np.ones((1, 1, 2)), top_k=0), "^top_k must be a positive"),
])
def test_messages_start_with_the_argument_name(call, message):
    """Each bad argument is named at the start of its ValueError (no other name, no decoration)."""
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_value_messages_give_its_index_and_the_box():
    """NaN and corner messages give the flat index of the first bad value and the bad box itself."""
    boxes = np.tile(GOOD, (3, 1))
    boxes[2, 1] = np.nan                                               # flat index 2 * 4 + 1 = 9
    with pytest.raises(ValueError, match=r"^a_xyxy contains NaN or inf \(flat index 9\)"):
        iou(boxes, GOOD)
    boxes = np.tile(GOOD, (3, 1))
    boxes[1] = [0.5, 0.0, 0.4, 1.0]                                    # x2 < x1
    with pytest.raises(ValueError, match=r"^boxes_xyxy\[1\] = \[0\.5, 0\.0, 0\.4, 1\.0\] has x2 < x1"):
        nms(boxes, np.ones(3), 0.5)
    boxes = np.tile(GOOD, (2, 3, 1))                                   # (N, P, 4): the index is (n, p)
    boxes[1, 2] = [0.0, 0.7, 1.0, 0.6]                                 # y2 < y1
    with pytest.raises(ValueError, match=r"^boxes_xyxy\[\(1, 2\)\] = \[0\.0, 0\.7, 1\.0, 0\.6\] has x2 < x1"):
        batched_detect(boxes, np.ones((2, 3, 2)))


def test_a_flat_prior_is_named_by_its_row():
    """A prior of zero width or height is reported with its own row index and values."""
    priors = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.3, 0.3], [0.4, 0.5, 0.0, 0.2], [0.5, 0.5, 0.1, 0.1]])
    with pytest.raises(ValueError, match=r"^priors_cxcywh\[2\] = \[0\.4, 0\.5, 0\.0, 0\.2\] has zero"):
        match(priors, GOOD, [1])
    priors[2] = [0.4, 0.5, 0.2, -0.1]
    with pytest.raises(ValueError, match=r"^priors_cxcywh\[2\] = "):
        build_prior_index(priors)


def test_match_batch_names_the_image_with_a_nan_box():
    """A NaN ground truth in the second image is reported as such, for that image."""
    gts = [np.array([[0.1, 0.1, 0.4, 0.5]]), np.array([[0.1, 0.1, 0.4, 0.5], [0.2, np.nan, 0.4, 0.5]])]
    with pytest.raises(ValueError, match=r"^gt_xyxy\[1\] contains NaN or inf \(flat index 5\)"):
        match_batch(make_priors("small"), gts, [[1], [1, 2]])
    with pytest.raises(ValueError, match=r"^gt_xyxy\[0\] contains NaN or inf \(flat index 5\)"):
        match_batch(make_priors("small"), gts[::-1], [[1, 2], [1]])


# -- dtypes: every input dtype reaches the kernels as float64 / int64 ----------------------------------------
def test_match_takes_float32_and_integer_inputs():
    """float32 priors, integer or float32 ground truths and float labels match as their float64 twins."""
    priors = make_priors("small")
    gt = np.array([[0.125, 0.25, 0.5, 0.75], [0.5, 0.5, 1.0, 1.0]])
    want = match(priors, gt, np.array([1, 2]))
    p32 = priors.astype(np.float32)
    for got in (match(p32, gt, [1, 2]), match(p32.astype(np.float64), gt.astype(np.float32), [1, 2]),
                match(priors, gt, np.array([1.0, 2.0]))):
        np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(match(p32, gt, [1, 2])[0], match(p32.astype(np.float64), gt, [1, 2])[0])
    assert build_prior_index(p32).priors_cxcywh.dtype == np.float64
    # integer boxes (a coarse grid of whole units)
    big = np.array([[2.0, 2.0, 4.0, 4.0], [6.0, 6.0, 2.0, 2.0]])
    gi = np.array([[1, 1, 3, 3]])
    L, M = match(big, gi, [3])
    np.testing.assert_array_equal(L, [3, 0])
    assert M.dtype == np.float64
    np.testing.assert_array_equal(M[0], [1, 1, 3, 3])


def test_large_integer_labels_are_kept_exactly():
    """Labels stay integers: a label above 2**53 (not exact as a float) comes back unchanged."""
    lab = 2**53 + 1
    prior = np.array([[0.5, 0.5, 1.0, 1.0]])
    labels, _ = match(prior, GOOD, np.array([lab], dtype=np.int64))
    assert int(labels[0]) == lab
    labels, _ = match_batch(prior, [GOOD, np.zeros((0, 4))], [np.array([lab]), np.array([], dtype=np.int64)])
    assert int(labels[0, 0]) == lab and int(labels[1, 0]) == 0        # an image without objects beside it


def test_nms_orders_unsigned_scores_by_value():
    """Unsigned integer scores are ranked by value: -0 is 0 but -3 wraps to 253 in uint8."""
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.9]], float)           # IoU 0.9
    np.testing.assert_array_equal(nms(boxes, np.array([0, 3], np.uint8), 0.5), [1])
    np.testing.assert_array_equal(nms(boxes, np.array([3, 0], np.uint8), 0.5), [0])


def test_batched_detect_takes_float32_and_integer_probabilities():
    """float32 or integer probabilities give the detections of their float64 values."""
    boxes = np.array([[[0, 0, 1, 1], [2, 2, 3, 3]]], float)
    probs = np.array([[[0.25, 0.75], [0.5, 0.5]]])
    want = batched_detect(boxes, probs)[0]
    got = batched_detect(boxes, probs.astype(np.float32))[0]
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    got = batched_detect(boxes, np.array([[[0, 1], [1, 0]]]))[0]
    np.testing.assert_array_equal(got.scores, [1.0])
    np.testing.assert_array_equal(got.boxes, boxes[0, :1])
    assert got.scores.dtype == np.float64


# -- nms and batched_detect edges -----------------------------------------------------------------------------
def test_an_image_without_objects_is_all_background():
    """No ground truth: every prior is background and carries its own box (so encode gives 0 there)."""
    priors = make_priors("small")
    labels, matched = match(priors, np.zeros((0, 4)), [])
    assert not labels.any()
    np.testing.assert_array_equal(matched, build_prior_index(priors).priors_xyxy)


def test_nms_keeps_a_single_box():
    """One box is always kept."""
    keep = nms(np.array([[0, 0, 1, 1.0]]), np.array([0.3]), 0.5)
    np.testing.assert_array_equal(keep, [0])
    assert keep.dtype == np.int64


def test_batched_detect_default_pre_nms_top_k_is_400():
    """By default 400 candidates per class enter NMS: a 401st box is never considered."""
    same = np.tile([[0.0, 0.0, 0.5, 0.5]], (400, 1))                  # 400 copies of one box: NMS keeps one
    boxes = np.concatenate([same, [[0.6, 0.6, 1.0, 1.0]]])[None]       # the 401st candidate, disjoint
    p1 = np.concatenate([np.linspace(0.9, 0.5, 400), [0.4]])
    probs = np.stack([1 - p1, p1], axis=-1)[None]
    assert len(batched_detect(boxes, probs)[0].scores) == 1
    assert len(batched_detect(boxes, probs, pre_nms_top_k=401)[0].scores) == 2


def test_batched_detect_default_top_k_is_200():
    """By default an image keeps its best 200 detections."""
    k = np.arange(201)
    boxes = np.stack([k, k, k + 0.5, k + 0.5], axis=1).astype(float)[None]   # 201 disjoint boxes
    p1 = np.linspace(0.9, 0.5, 201)
    probs = np.stack([1 - p1, p1], axis=-1)[None]
    d = batched_detect(boxes, probs)[0]
    assert len(d.scores) == 200 and d.scores[-1] == p1[199]
    assert len(batched_detect(boxes, probs, top_k=201)[0].scores) == 201


# -- build_prior_index: the layout it documents ---------------------------------------------------------------
def _shapes_priors(P, n_shapes):
    """P priors on a line, cycling through n_shapes distinct shapes."""
    k = np.arange(P)
    w = 0.05 + 0.01 * (k % n_shapes)
    return np.stack([0.1 + 0.8 * k / max(P, 1), np.full(P, 0.5), w, np.full(P, 0.1)], axis=1)


@pytest.mark.parametrize("P, n_shapes, grouped", [
    (0, 0, False), (1, 1, True), (16, 1, True), (16, 2, False), (32, 2, True), (32, 3, False), (48, 3, True),
])
def test_grouped_layout_is_chosen_when_there_are_16_priors_per_shape(P, n_shapes, grouped):
    """Default layout: grouped when the shapes number at most max(1, P // 16), else one flat list."""
    priors = _shapes_priors(P, n_shapes)
    assert len(np.unique(priors[:, 2:], axis=0)) == n_shapes
    assert build_prior_index(priors).grouped is grouped


def check_index(ix, priors):
    """The invariants of a PriorIndex, as its fields document them."""
    P = len(priors)
    xyxy = cxcywh_to_xyxy(priors)
    np.testing.assert_array_equal(ix.priors_cxcywh, priors)
    np.testing.assert_array_equal(np.sort(ix.order), np.arange(P))
    assert ix.order.dtype == np.intp and ix.col_start.dtype == np.intp and ix.group_col.dtype == np.intp
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    np.testing.assert_array_equal(ix.soa, np.concatenate([xyxy[ix.order].T, area[ix.order][None]]))
    R, Q = len(ix.col_start) - 1, len(ix.group_col) - 1
    assert ix.col_start[0] == 0 and ix.col_start[-1] == P and np.all(np.diff(ix.col_start) > 0)
    assert ix.group_col[0] == 0 and ix.group_col[-1] == R and np.all(np.diff(ix.group_col) > 0)
    assert ix.col_x1.shape == ix.col_x2.shape == (R,) and ix.group_area.shape == (Q,)
    if not ix.grouped:
        np.testing.assert_array_equal(ix.order, np.arange(P))
        assert R == Q == 1
        return
    assert Q == len(np.unique(priors[:, 2:], axis=0))
    keys = []
    for q in range(Q):
        cols = range(ix.group_col[q], ix.group_col[q + 1])
        members = ix.order[ix.col_start[cols[0]]:ix.col_start[cols[-1] + 1]]
        wh = priors[members, 2:]
        assert np.all(wh == wh[0]) and ix.group_area[q] == wh[0, 0] * wh[0, 1]
        keys.append((ix.group_area[q], wh[0, 0], wh[0, 1]))
        cx_of_cols = []
        for c in cols:
            m = ix.order[ix.col_start[c]:ix.col_start[c + 1]]
            assert np.all(priors[m, 0] == priors[m[0], 0])                 # one centre x per column
            assert np.all(np.diff(priors[m, 1]) >= 0)                       # centre y ascending
            assert ix.col_x1[c] == xyxy[m[0], 0] and ix.col_x2[c] == xyxy[m[0], 2]
            cx_of_cols.append(priors[m[0], 0])
        assert np.all(np.diff(cx_of_cols) > 0)                              # one column per centre x
    assert keys == sorted(keys)                                             # by area, ties by (w, h)


@pytest.mark.parametrize("name", ["small", "ssd300"])
def test_prior_index_layout_of_default_boxes(name):
    """The default boxes' index: groups by shape, columns by centre x, as documented."""
    priors = make_priors(name)
    check_index(build_prior_index(priors), priors)
    check_index(build_prior_index(priors, grouped=False), priors)


def test_prior_index_groups_of_equal_area_are_ordered_by_shape():
    """Groups are numbered by area, and shapes of equal area by (w, h): a stable order, not a quick sort's."""
    sides = 2.0 ** -np.arange(1, 8)
    shapes = np.array([(w, h) for w in sides for h in sides])          # 49 shapes, areas tie exactly
    centres = np.array([[0.25, 0.25], [0.25, 0.75], [0.75, 0.5]])
    priors = np.array([[*c, *s] for s in shapes[::-1] for c in centres])
    ix = build_prior_index(priors, grouped=True)
    check_index(ix, priors)


def test_prior_index_of_no_priors():
    """No priors: an empty index in either layout, and matching gives empty results."""
    empty = np.zeros((0, 4))
    for grouped in (None, True, False):
        ix = build_prior_index(empty, grouped=grouped)
        assert ix.grouped is (grouped is True)
        assert ix.order.shape == (0,) and ix.soa.shape == (5, 0)
        if grouped:
            np.testing.assert_array_equal(ix.col_start, [0])
            np.testing.assert_array_equal(ix.group_col, [0])
            assert ix.group_area.shape == (0,) and ix.col_x1.shape == (0,)
        L, M = match(empty, GOOD, [1], index=ix)
        assert L.shape == (0,) and M.shape == (0, 4)


# -- one argument on the GPU is enough (runs where CuPy and a GPU are present) ---------------------------------
@gpu
@pytest.mark.gpu
def test_one_gpu_argument_puts_the_result_on_the_gpu():
    """iou, nms, match_batch, encode and decode follow any one CuPy argument, with the CPU's result."""
    import cupy as cp
    a = np.array([[0, 0, 2, 2], [1, 1, 3, 3]], float)
    b = np.array([[1, 1, 3, 3.0]])
    scores = np.array([0.9, 0.8])
    priors = make_priors("small")
    gt, lab = np.array([[0.1, 0.1, 0.4, 0.5]]), np.array([2])
    g = cxcywh_to_xyxy(priors)
    calls = [
        (iou, (a, b)),
        (lambda x, s: nms(x, s, 0.1), (a, scores)),
        (lambda p, g_, l_: match_batch(p, [g_], [l_])[0], (priors, gt, lab)),
        (lambda p, g_, l_: match_batch(p, [g_], [l_])[1], (priors, gt, lab)),
        (lambda x, p: encode(x, p), (g, priors)),
        (lambda x, p: decode(x, p), (np.zeros_like(priors), priors)),
    ]
    for fn, args in calls:
        want = fn(*args)
        for i in range(len(args)):
            moved = [cp.asarray(x) if j == i else x for j, x in enumerate(args)]
            got = fn(*moved)
            assert isinstance(got, cp.ndarray), (fn, i)
            np.testing.assert_allclose(cp.asnumpy(got), want, atol=1e-12)


# -- minissd/boxes/reference.py, the NumPy twins themselves (mutated in session 5) ----------------------
def test_reference_iou_keeps_the_input_dtype():
    from minissd.boxes.reference import iou_ref

    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2]], np.float32)
    out = iou_ref(a, b)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1 / 7, 1.0]], rtol=1e-6)


def test_reference_match_labels_are_int64_and_iou_at_the_threshold_is_positive():
    # Prior 0 is the ground truth itself (paired first); prior 1 overlaps it at IoU exactly 0.5, which
    # counts as a match ("at or above the threshold"), in the twin and in the Cython kernel alike.
    import inspect

    from minissd.boxes import match
    from minissd.boxes.reference import match_ref

    priors = np.array([[0.5, 0.25, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0]])
    gt = np.array([[0.0, 0.0, 1.0, 0.5]])
    lab = np.array([3], np.int64)
    labels, matched = match_ref(priors, gt, lab, threshold=0.5)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 3]
    np.testing.assert_array_equal(matched, [gt[0], gt[0]])
    k_labels = match(priors, gt, lab, threshold=0.5)[0]
    assert np.asarray(k_labels).tolist() == [3, 3]
    empty_labels, _ = match_ref(priors, np.zeros((0, 4)), np.zeros(0, np.int64))
    assert empty_labels.dtype == np.int64 and empty_labels.tolist() == [0, 0]
    assert inspect.signature(match_ref).parameters["threshold"].default == 0.5


def test_reference_detect_defaults_lengths_and_empty_labels():
    import inspect

    from minissd.boxes import batched_detect
    from minissd.boxes.reference import batched_detect_ref

    ours = inspect.signature(batched_detect).parameters
    ref = inspect.signature(batched_detect_ref).parameters
    for name in ("score_threshold", "nms_threshold", "pre_nms_top_k", "top_k"):
        assert ref[name].default == ours[name].default, name
    # The defaults at work (score 0.01, NMS 0.45, 400 per class before NMS, 200 per image): class 1 has
    # 450 disjoint boxes, one of them under the score threshold; class 2 two boxes at IoU 0.6.
    g = np.arange(450)
    x0, y0 = (g % 25) * 0.04, (g // 25) * 0.04
    disjoint = np.stack([x0, y0, x0 + 0.02, y0 + 0.02], axis=1)
    pair = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.1, 0.5, 0.6]])      # IoU 0.2 / 0.3 = 0.667
    bx = np.concatenate([disjoint, pair])[None]
    pr = np.zeros((1, 452, 3))
    pr[0, :450, 1] = np.linspace(0.02, 0.5, 450)
    pr[0, 449, 1] = 0.005
    pr[0, 450:, 2] = [0.9, 0.8]
    for kw, n in (({}, 200), ({"top_k": 1000}, 401)):
        (d,) = batched_detect_ref(bx, pr, **kw)
        (k,) = batched_detect(bx, pr, **kw)
        assert len(d.labels) == n and int((d.labels == 2).sum()) == 1
        np.testing.assert_array_equal(d.labels, k.labels)
        np.testing.assert_allclose(d.scores, k.scores)
    boxes = np.array([[[0.0, 0.0, 0.5, 0.5]]])
    with pytest.raises(ValueError):                       # one image of boxes, two of probabilities
        batched_detect_ref(boxes, np.full((2, 1, 2), 0.5))
    (det,) = batched_detect_ref(boxes, np.ones((1, 1, 1)))   # background only: nothing to detect
    assert det.labels.dtype == np.int64 and det.labels.shape == (0,) and det.boxes.shape == (0, 4)

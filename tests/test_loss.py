"""MultiBox loss (minissd/loss.py): value, gradients, hard negative mining, edge cases, bad input.

Oracles: float64 central differences (gradients), a brute-force per-prior Python loop (value, gradients,
selection), PyTorch autograd (value, both gradients, selection), and the stable-sort twin
`mine_hard_negatives_ref` (selection, under hypothesis).
"""
import math

import numpy as np
import pytest

from conftest import given, gpu, requires_torch, settings, st
from minissd.backend import to_cpu
from minissd.loss import (
    LossParts,
    MultiBoxLoss,
    NonFiniteError,
    log_softmax,
    mine_hard_negatives,
    mine_hard_negatives_ref,
    negatives_per_image,
)
from minissd.testing import assert_close, max_rel_error, numeric_grad


def make_batch(rng, n=3, p=40, m=4, pos_per_image=(2, 0, 5), dtype=np.float64, logit_scale=2.0,
               xp=np):
    """Random loss inputs; loc - loc_t at positives kept at |x| in [0.1, 0.9] or [1.1, 2.5] (no kink)."""
    conf = rng.standard_normal((n, p, m)) * logit_scale
    loc_t = rng.standard_normal((n, p, 4))
    mag = np.where(rng.random((n, p, 4)) < 0.5, rng.uniform(0.1, 0.9, (n, p, 4)),
                   rng.uniform(1.1, 2.5, (n, p, 4)))
    loc = loc_t + mag * rng.choice([-1.0, 1.0], (n, p, 4))
    labels = np.zeros((n, p), dtype=np.int64)
    for i, k in enumerate(pos_per_image):
        idx = rng.choice(p, k, replace=False)
        labels[i, idx] = rng.integers(1, m, k)
    cast = lambda a: xp.asarray(a.astype(dtype))  # noqa: E731
    return cast(loc), cast(conf), cast(loc_t), xp.asarray(labels)


# -- the oracles -----------------------------------------------------------------------------------
def brute_force(loc, conf, loc_t, labels, ratio=3.0, alpha=1.0, min_negatives=0):
    """The loss written prior by prior in plain Python floats: (total, conf, loc, N, neg_mask, d_loc, d_conf)."""
    n, p, m = conf.shape
    neg_mask = np.zeros((n, p), dtype=bool)
    num_pos = int((labels > 0).sum())
    norm = max(num_pos, 1)
    conf_sum = loc_sum = 0.0
    d_loc = np.zeros(loc.shape)
    d_conf = np.zeros(conf.shape)
    for i in range(n):
        bg = []
        for j in range(p):
            row = [float(v) for v in conf[i, j]]
            mx = max(row)
            lse = mx + math.log(sum(math.exp(v - mx) for v in row))
            if labels[i, j] == 0:
                bg.append((-(lse - row[0]), j))    # sort key: hardest first, then lower index
        n_pos = sum(1 for j in range(p) if labels[i, j] > 0)
        k = min(max(int(math.floor(ratio * n_pos)), min_negatives), p - n_pos)
        for _, j in sorted(bg)[:k]:
            neg_mask[i, j] = True
        for j in range(p):
            y = int(labels[i, j])
            row = [float(v) for v in conf[i, j]]
            mx = max(row)
            lse = mx + math.log(sum(math.exp(v - mx) for v in row))
            if y > 0 or neg_mask[i, j]:
                conf_sum += lse - row[y]
                for c in range(m):
                    d_conf[i, j, c] = (math.exp(row[c] - lse) - (1.0 if c == y else 0.0)) / norm
            if y > 0:
                for q in range(4):
                    x = float(loc[i, j, q]) - float(loc_t[i, j, q])
                    loc_sum += 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5
                    d_loc[i, j, q] = alpha * max(-1.0, min(1.0, x)) / norm
    return (conf_sum / norm + alpha * loc_sum / norm, conf_sum / norm, loc_sum / norm, num_pos, neg_mask,
            d_loc, d_conf)


def torch_loss(loc, conf, loc_t, labels, ratio=3.0, alpha=1.0):
    """The same loss with PyTorch autograd; mining by a stable sort. Returns (total, neg_mask, d_loc, d_conf)."""
    import torch
    import torch.nn.functional as F

    loc = torch.tensor(loc, requires_grad=True)
    conf = torch.tensor(conf, requires_grad=True)
    loc_t = torch.tensor(loc_t)
    labels = torch.tensor(labels)
    pos = labels > 0
    logp = F.log_softmax(conf, dim=2)
    with torch.no_grad():
        bg = -logp[..., 0]
        bg = bg.masked_fill(pos, -float("inf"))
        order = torch.sort(-bg, dim=1, stable=True).indices      # hardest first, ties by index
        rank = torch.argsort(order, dim=1)
        n_pos = pos.sum(1)
        k = torch.minimum(torch.floor(n_pos * ratio).long(), pos.shape[1] - n_pos)
        neg = rank < k[:, None]
    sel = pos | neg
    ce = F.nll_loss(logp[sel], labels[sel], reduction="sum")
    sl1 = F.smooth_l1_loss(loc[pos], loc_t[pos], beta=1.0, reduction="sum")
    total = (ce + alpha * sl1) / max(int(n_pos.sum()), 1)
    total.backward()
    return float(total.detach()), neg.numpy(), loc.grad.numpy(), conf.grad.numpy()


# -- value and gradients ---------------------------------------------------------------------------
def test_gradients_match_central_differences(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=2, p=16, m=3, pos_per_image=(2, 3))
    loss = MultiBoxLoss(alpha=0.7)
    loss.forward(loc, conf, loc_t, labels)
    mask = loss.neg_mask.copy()
    d_loc, d_conf = loss.backward()

    def f():
        total = loss.forward(loc, conf, loc_t, labels).total
        # The derivative is of the loss with the mined set fixed; the step must not change it.
        assert np.array_equal(loss.neg_mask, mask), "a finite-difference step changed the mined set"
        return np.float64(total)

    # Central differences, eps 1e-6: truncation O(eps^2) and rounding ~1e-16/1e-6 give ~1e-9 absolute.
    assert_close(d_loc, numeric_grad(f, loc, 1.0), rtol=1e-5, atol=1e-8, name="d_loc")
    assert_close(d_conf, numeric_grad(f, conf, 1.0), rtol=1e-5, atol=1e-8, name="d_conf")
    assert np.count_nonzero(d_conf.any(axis=2)) == (labels > 0).sum() + mask.sum()


def test_matches_brute_force_loop(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=3, p=12, m=3, pos_per_image=(1, 2, 0))
    loss = MultiBoxLoss(neg_pos_ratio=3.0, alpha=1.5)
    parts = loss.forward(loc, conf, loc_t, labels)
    d_loc, d_conf = loss.backward()
    total, c, lo, npos, neg, bd_loc, bd_conf = brute_force(loc, conf, loc_t, labels, 3.0, 1.5)
    assert parts.num_pos == npos == 3
    assert np.array_equal(loss.neg_mask, neg)
    assert neg.sum(axis=1).tolist() == [3, 6, 0]
    assert_close(parts.total, total, rtol=1e-12, name="total")
    assert_close(parts.conf, c, rtol=1e-12, name="conf")
    assert_close(parts.loc, lo, rtol=1e-12, name="loc")
    assert_close(d_loc, bd_loc, rtol=1e-12, atol=1e-15, name="d_loc")
    assert_close(d_conf, bd_conf, rtol=1e-10, atol=1e-15, name="d_conf")


@requires_torch
@pytest.mark.parametrize("shape,pos", [((4, 200, 5), (3, 0, 11, 40)), ((32, 1524, 5), None)])
def test_matches_pytorch_autograd_float32(rng, shape, pos):
    n, p, m = shape
    if pos is None:   # the training shape: 1-40 positives per image
        pos = tuple(int(k) for k in rng.integers(1, 41, n))
    loc, conf, loc_t, labels = make_batch(rng, n, p, m, pos, dtype=np.float32)
    loss = MultiBoxLoss()
    parts = loss.forward(loc, conf, loc_t, labels)
    d_loc, d_conf = loss.backward()
    t_total, t_neg, t_dloc, t_dconf = torch_loss(loc, conf, loc_t, labels)
    assert np.array_equal(loss.neg_mask, t_neg), "mined negatives differ from PyTorch's stable sort"
    assert d_loc.dtype == d_conf.dtype == np.float32
    assert abs(parts.total - t_total) <= 1e-5 * abs(t_total)
    # Element-wise relative error; entries that are exactly 0 in both (unselected boxes) count as 0.
    assert max_rel_error(d_loc, t_dloc) <= 1e-5
    assert max_rel_error(d_conf, t_dconf) <= 1e-5


@requires_torch
def test_extreme_logits_stay_finite_and_match_pytorch(rng):
    loc, conf, loc_t, labels = make_batch(rng, 2, 50, 4, (3, 4), dtype=np.float32)
    conf = np.where(rng.random(conf.shape) < 0.5, 100.0, -100.0).astype(np.float32)
    conf[0, :5] = [100.0, -100.0, -100.0, -100.0]  # ties in background loss (all exactly 0)
    loss = MultiBoxLoss()
    parts = loss.forward(loc, conf, loc_t, labels)
    d_loc, d_conf = loss.backward()
    assert all(math.isfinite(v) for v in parts[:3])
    assert np.isfinite(d_conf).all() and np.isfinite(d_loc).all()
    t_total, t_neg, t_dloc, t_dconf = torch_loss(loc, conf, loc_t, labels)
    assert np.array_equal(loss.neg_mask, t_neg)
    assert abs(parts.total - t_total) <= 1e-5 * abs(t_total)
    assert max_rel_error(d_conf, t_dconf) <= 1e-5
    # a wrong positive at logit gap 200 costs 200 (not inf): the log-sum-exp keeps it exact
    ref = brute_force(loc.astype(np.float64), conf.astype(np.float64), loc_t.astype(np.float64), labels)
    assert_close(parts.total, ref[0], rtol=1e-6, name="total at +-100")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_follow_inputs(rng, dtype):
    loc, conf, loc_t, labels = make_batch(rng, dtype=dtype)
    loss = MultiBoxLoss()
    parts = loss.forward(loc, conf, loc_t, labels.astype(np.int32))
    d_loc, d_conf = loss.backward()
    assert isinstance(parts, LossParts)
    assert all(type(v) is float for v in parts[:3]) and type(parts.num_pos) is int
    assert d_loc.dtype == d_conf.dtype == dtype
    assert d_loc.flags.c_contiguous and d_conf.flags.c_contiguous
    ref = brute_force(*(a.astype(np.float64) for a in (loc, conf, loc_t)), labels)
    assert_close(parts.total, ref[0], rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert parts.total == pytest.approx(parts.conf + parts.loc)


def test_alpha_weights_only_the_localisation_term(rng):
    batch = make_batch(rng)
    a = MultiBoxLoss(alpha=1.0)
    b = MultiBoxLoss(alpha=2.5)
    pa, pb = a.forward(*batch), b.forward(*batch)
    assert pb.conf == pa.conf and pb.loc == pa.loc
    assert pb.total == pytest.approx(pa.conf + 2.5 * pa.loc, rel=1e-14)
    assert_close(b.backward()[0], 2.5 * a.backward()[0], rtol=1e-14)


def test_inputs_are_not_modified(rng):
    batch = make_batch(rng)
    copies = [a.copy() for a in batch]
    loss = MultiBoxLoss()
    loss.forward(*batch)
    loss.backward()
    for a, c in zip(batch, copies, strict=True):
        assert np.array_equal(a, c)


# -- hard negative mining --------------------------------------------------------------------------
def test_mining_picks_the_highest_background_loss(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=1, p=30, m=3, pos_per_image=(2,))
    loss = MultiBoxLoss()
    loss.forward(loc, conf, loc_t, labels)
    bg = -log_softmax(conf)[0, :, 0]
    negs = np.flatnonzero(~(labels[0] > 0))
    hardest = negs[np.argsort(-bg[negs], kind="stable")[:6]]
    assert sorted(np.flatnonzero(loss.neg_mask[0])) == sorted(hardest)
    assert loss.num_neg.tolist() == [6]


def test_ties_go_to_the_lower_prior_index():
    # Every background box has the same loss: the selection must be the first ones in prior order.
    n, p, m = 2, 20, 3
    conf = np.zeros((n, p, m))
    labels = np.zeros((n, p), dtype=np.int64)
    labels[0, [3, 10]] = 1            # 2 positives -> 6 negatives: 0, 1, 2, 4, 5, 6
    labels[1, 0] = 2                  # 1 positive -> 3 negatives: 1, 2, 3
    conf[1, 7, 1] = 5.0               # a harder negative jumps the queue: 7, then 1, 2
    loss = MultiBoxLoss()
    loss.forward(np.zeros((n, p, 4)), conf, np.zeros((n, p, 4)), labels)
    assert np.flatnonzero(loss.neg_mask[0]).tolist() == [0, 1, 2, 4, 5, 6]
    assert np.flatnonzero(loss.neg_mask[1]).tolist() == [1, 2, 7]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mining_equals_the_stable_sort_twin(data):
    n = data.draw(st.integers(1, 4))
    p = data.draw(st.integers(1, 30))
    seed = data.draw(st.integers(0, 2**32 - 1))
    r = np.random.default_rng(seed)
    # Few distinct values, so exact ties are common.
    bg = r.integers(0, data.draw(st.integers(1, 5)), (n, p)).astype(np.float32)
    pos = r.random((n, p)) < data.draw(st.floats(0, 1))
    k = r.integers(0, p + 1, n)
    k = np.minimum(k, p - pos.sum(1))
    got = mine_hard_negatives(bg, pos, k)
    assert np.array_equal(got, mine_hard_negatives_ref(bg, pos, k))
    assert got.sum(1).tolist() == k.tolist() and not (got & pos).any()


def test_mining_is_deterministic_and_order_independent_of_batch(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=4, p=60, m=4, pos_per_image=(1, 2, 3, 4))
    conf = np.round(conf)                      # many exact ties
    loss = MultiBoxLoss()
    loss.forward(loc, conf, loc_t, labels)
    full = loss.neg_mask.copy()
    loss.forward(loc, conf, loc_t, labels)
    assert np.array_equal(full, loss.neg_mask)
    # Mining is per image: image 2 alone selects what it selected inside the batch.
    loss.forward(loc[2:3], conf[2:3], loc_t[2:3], labels[2:3])
    assert np.array_equal(loss.neg_mask[0], full[2])


def test_negatives_per_image_rule():
    k = negatives_per_image(np.array([0, 1, 2, 5, 9]), 20, 3.0)
    assert k.tolist() == [0, 3, 6, 15, 11]     # 9 positives leave 11 negatives
    assert negatives_per_image(np.array([1, 3]), 20, 2.5).tolist() == [2, 7]   # floor(2.5), floor(7.5)
    assert negatives_per_image(np.array([0, 1, 19, 20]), 20, 3.0, min_negatives=4).tolist() == [4, 4, 1, 0]


# -- edge cases ------------------------------------------------------------------------------------
def test_image_without_positives_contributes_nothing(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=3, p=30, m=3, pos_per_image=(2, 0, 3))
    loss = MultiBoxLoss()
    parts = loss.forward(loc, conf, loc_t, labels)
    d_loc, d_conf = loss.backward()
    assert loss.num_neg.tolist() == [6, 0, 9]
    assert not loss.neg_mask[1].any()
    assert not d_conf[1].any() and not d_loc[1].any()
    # the loss is the two other images' terms over their 5 positives
    ref = brute_force(loc[[0, 2]], conf[[0, 2]], loc_t[[0, 2]], labels[[0, 2]])
    assert parts.num_pos == 5 and parts.total == pytest.approx(ref[0], rel=1e-12)


def test_batch_without_positives_is_exactly_zero(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=2, p=30, m=3, pos_per_image=(0, 0))
    loss = MultiBoxLoss()
    parts = loss.forward(loc, conf, loc_t, labels)
    assert parts == LossParts(0.0, 0.0, 0.0, 0)
    d_loc, d_conf = loss.backward()
    assert not d_loc.any() and not d_conf.any()


def test_min_negatives_mines_images_without_positives(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=2, p=30, m=3, pos_per_image=(0, 0))
    loss = MultiBoxLoss(min_negatives=4)
    parts = loss.forward(loc, conf, loc_t, labels)
    assert loss.neg_mask.sum(axis=1).tolist() == [4, 4]
    ref = brute_force(loc, conf, loc_t, labels, min_negatives=4)
    assert np.array_equal(loss.neg_mask, ref[4])
    # normaliser max(N, 1) = 1: the loss is the sum of the 8 background losses
    assert parts.loc == 0.0 and parts.total == pytest.approx(ref[0], rel=1e-12) and parts.total > 0
    assert_close(loss.backward()[1], ref[6], rtol=1e-10, atol=1e-15)


def test_all_priors_positive(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=2, p=10, m=3, pos_per_image=(0, 0))
    labels = rng.integers(1, 3, (2, 10))
    loss = MultiBoxLoss()
    parts = loss.forward(loc, conf, loc_t, labels)
    assert not loss.neg_mask.any() and parts.num_pos == 20
    ref = brute_force(loc, conf, loc_t, labels)
    assert parts.total == pytest.approx(ref[0], rel=1e-12)


def test_more_negatives_requested_than_available(rng):
    loc, conf, loc_t, labels = make_batch(rng, n=1, p=8, m=3, pos_per_image=(3,))
    loss = MultiBoxLoss(neg_pos_ratio=10)
    parts = loss.forward(loc, conf, loc_t, labels)
    assert np.array_equal(loss.neg_mask[0], labels[0] == 0)      # all 5 negatives, no more
    assert parts.total == pytest.approx(brute_force(loc, conf, loc_t, labels, ratio=10)[0], rel=1e-12)


def test_background_targets_may_hold_inf(rng):
    # targets of background boxes are never read: an inf there (log of an empty match) must not leak
    loc, conf, loc_t, labels = make_batch(rng)
    clean = MultiBoxLoss().forward(loc, conf, loc_t, labels)
    loc_t = loc_t.copy()
    loc_t[labels == 0] = np.inf
    loss = MultiBoxLoss()
    assert loss.forward(loc, conf, loc_t, labels) == clean
    assert all(np.isfinite(g).all() for g in loss.backward())


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        MultiBoxLoss().backward()


# -- bad input -------------------------------------------------------------------------------------
def _good_args(rng):
    loc, conf, loc_t, labels = make_batch(rng)
    return dict(loc=loc, conf=conf, loc_t=loc_t, labels=labels)


@pytest.mark.parametrize("arg,value,match", [
    ("loc", lambda a: a["loc"][..., :3], "loc must have shape"),
    ("loc", lambda a: a["loc"].tolist(), "loc must be a NumPy or CuPy array"),
    ("conf", lambda a: a["conf"][:, :5], "conf must have shape"),
    ("conf", lambda a: a["conf"][..., :1], "conf must have shape"),
    ("loc_t", lambda a: a["loc_t"][:2], "loc_t must have the shape"),
    ("labels", lambda a: a["labels"][:, :3], "labels must have shape"),
    ("labels", lambda a: a["labels"].astype(np.float64), "labels must be an integer"),
    ("labels", lambda a: np.full_like(a["labels"], 4), r"labels must lie in \[0, 3\]"),
    ("labels", lambda a: np.full_like(a["labels"], -1), r"labels must lie in \[0, 3\]"),
    ("loc", lambda a: a["loc"].astype(np.int32), "loc must be float32 or float64"),
    ("conf", lambda a: a["conf"].astype(np.float16), "conf must be float32 or float64"),
    ("conf", lambda a: np.where(np.arange(40)[None, :, None] == 7, np.nan, a["conf"]), "conf holds NaN"),
    ("loc", lambda a: np.where(np.arange(40)[None, :, None] == 7, np.inf, a["loc"]), "loc holds NaN or inf"),
    ("loc_t", lambda a: np.where(a["labels"][..., None] > 0, np.nan, a["loc_t"]), "loc_t holds NaN"),
])
def test_bad_input_raises_value_error_naming_the_argument(rng, arg, value, match):
    args = _good_args(rng)
    args[arg] = value(args)
    with pytest.raises(ValueError, match=match):
        MultiBoxLoss().forward(**args)


def test_non_finite_error_is_a_value_error_and_can_be_switched_off(rng):
    args = _good_args(rng)
    args["conf"] = args["conf"].copy()
    args["conf"][0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        MultiBoxLoss().forward(**args)
    parts = MultiBoxLoss(check_finite=False).forward(**args)   # the caller decides what NaN means
    assert isinstance(parts.total, float)


@pytest.mark.parametrize("kwargs,match", [({"neg_pos_ratio": -1}, "neg_pos_ratio"), ({"alpha": float("nan")},
                                           "alpha"), ({"min_negatives": 1.5}, "min_negatives")])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiBoxLoss(**kwargs)


# -- devices ---------------------------------------------------------------------------------------
@gpu
@pytest.mark.gpu
def test_cpu_equals_gpu(rng):
    import cupy

    batch = make_batch(rng, n=8, p=500, m=6, pos_per_image=(0, 1, 2, 3, 5, 8, 13, 21), dtype=np.float32)
    batch[1][:, ::3] = batch[1][:, :1]                 # every third box scores alike: exact ties to break
    cpu = MultiBoxLoss()
    pc = cpu.forward(*batch)
    dc = cpu.backward()
    dev = MultiBoxLoss()
    pg = dev.forward(*(cupy.asarray(a) for a in batch))
    dg = dev.backward()
    assert isinstance(dg[0], cupy.ndarray) and isinstance(dg[1], cupy.ndarray)
    assert np.array_equal(cpu.neg_mask, to_cpu(dev.neg_mask))
    assert pg.num_pos == pc.num_pos
    assert pg.total == pytest.approx(pc.total, rel=1e-5)
    assert max_rel_error(dg[0], dc[0]) <= 1e-5 and max_rel_error(dg[1], dc[1]) <= 1e-5


def test_runs_on_the_device_of_its_inputs(rng, xp):
    batch = make_batch(rng, xp=xp)
    loss = MultiBoxLoss()
    parts = loss.forward(*batch)
    d_loc, d_conf = loss.backward()
    assert type(d_loc) is type(batch[0]) and type(d_conf) is type(batch[1])
    ref = brute_force(*(to_cpu(a) for a in batch))
    assert parts.total == pytest.approx(ref[0], rel=1e-12)

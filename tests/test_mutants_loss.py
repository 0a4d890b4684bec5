"""Tests added after mutation testing of minissd/loss.py (tests/mutation/loss.md): each pins a behaviour
that the rest of tests/test_loss.py left open (a mutant survived it)."""
import re
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from minissd import backend
from minissd.loss import (
    MultiBoxLoss,
    NonFiniteError,
    log_softmax,
    mine_hard_negatives,
    mine_hard_negatives_ref,
    negatives_per_image,
    smooth_l1,
)


def test_log_softmax_shifts_each_row_by_its_own_maximum():
    """Rows of very different magnitude: a shift by the global maximum (or adding the maximum instead
    of subtracting it) underflows or overflows exp() and gives -inf/nan; mathematically it is the same
    function, so only extreme rows tell the two apart."""
    x = np.array([[1000.0, 999.0], [-1000.0, -1001.0], [0.0, 0.0]])
    a = -np.log1p(np.exp(-1.0))
    expected = np.array([[a, a - 1.0], [a, a - 1.0], [-np.log(2.0), -np.log(2.0)]])
    np.testing.assert_allclose(log_softmax(x), expected, rtol=1e-12)
    np.testing.assert_allclose(log_softmax(x.T, axis=0), expected.T, rtol=1e-12)
    x32 = np.array([[60.0, 59.0, -40.0]], np.float32)     # exp(120) overflows float32
    y32 = log_softmax(x32)
    assert y32.dtype == np.float32 and np.all(np.isfinite(y32))
    np.testing.assert_allclose(np.exp(y32).sum(), 1.0, rtol=1e-6)


def test_mine_hard_negatives_ref_returns_a_boolean_mask():
    """The twin's result is used as a mask (``~mask``, ``mask & other``): a 0/1 float array is wrong."""
    bg = np.array([[0.3, 0.9, 0.1, 0.5]])
    out = mine_hard_negatives_ref(bg, np.array([[False, True, False, False]]), np.array([2]))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, [[True, False, False, True]])


# -- helpers -----------------------------------------------------------------------------------------
def _batch(seed, n=2, p=24, m=3, positives=(3, 2), dtype=np.float64):
    """Random inputs with ``positives[i]`` positive boxes in image i."""
    r = np.random.default_rng(seed)
    loc = r.standard_normal((n, p, 4)).astype(dtype)
    conf = (2 * r.standard_normal((n, p, m))).astype(dtype)
    loc_t = r.standard_normal((n, p, 4)).astype(dtype)
    labels = np.zeros((n, p), np.int64)
    for i, k in enumerate(positives):
        labels[i, r.choice(p, k, replace=False)] = r.integers(1, m, k)
    return loc, conf, loc_t, labels


def _raises_exactly(message, *args, loss=None):
    """forward(*args) raises ValueError with exactly ``message`` (after the class name)."""
    with pytest.raises(ValueError, match="^" + re.escape("MultiBoxLoss: " + message) + "$"):
        (loss or MultiBoxLoss()).forward(*args)


# -- input checks: each bad input is named in the message ------------------------------------------------
class _DeviceArray:
    """Plays a CuPy array for `backend.is_gpu_array` (the fixture below makes it the GPU array type)."""

    def __init__(self, a):
        self.a = np.asarray(a)


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", SimpleNamespace(ndarray=_DeviceArray))


def test_inputs_on_two_devices_are_refused_naming_each_ones_device(fake_gpu):
    """One GPU array among CPU arrays: refused before anything is computed, and the message says which
    input lives where (a GPU array is a valid type, so the type check must let it through first)."""
    loc, conf, loc_t, labels = _batch(0)
    _raises_exactly("inputs must be on one device (loc on GPU, conf on CPU, loc_t on CPU, labels on CPU)",
                    _DeviceArray(loc), conf, loc_t, labels)
    _raises_exactly("inputs must be on one device (loc on CPU, conf on CPU, loc_t on CPU, labels on GPU)",
                    loc, conf, loc_t, _DeviceArray(labels))


def test_labels_that_are_not_an_array_are_named():
    loc, conf, loc_t, labels = _batch(0)
    _raises_exactly("labels must be a NumPy or CuPy array, got list", loc, conf, loc_t, labels.tolist())


def test_label_range_reports_the_smallest_and_largest_label():
    """A -1 among valid labels is refused even though the largest label is fine."""
    loc, conf, loc_t, labels = _batch(0, m=3)
    labels = labels.copy()
    labels[0, 0], labels[1, 5] = -1, 2
    _raises_exactly("labels must lie in [0, 2] for M = 3 classes (0 = background), got values in [-1, 2]",
                    loc, conf, loc_t, labels)


def test_two_classes_and_a_single_box_are_a_valid_batch():
    """M = 2 (one object class + background) and N = P = 1 are the smallest accepted inputs."""
    loc, conf, loc_t, labels = _batch(1, n=1, p=1, m=2, positives=(1,))
    parts = MultiBoxLoss().forward(loc, conf, loc_t, labels)
    d = loc[0, 0] - loc_t[0, 0]
    expected_loc = float(smooth_l1(d).sum())
    expected_conf = float(-log_softmax(conf[0, 0])[1])
    assert parts.num_pos == 1
    assert parts.loc == pytest.approx(expected_loc, rel=1e-12)
    assert parts.conf == pytest.approx(expected_conf, rel=1e-12)


def test_an_empty_batch_is_refused():
    _raises_exactly("empty batch (loc shape (2, 0, 4))", np.zeros((2, 0, 4)), np.zeros((2, 0, 3)),
                    np.zeros((2, 0, 4)), np.zeros((2, 0), np.int64))


# -- parameters ------------------------------------------------------------------------------------------
def test_zero_or_fractional_ratio_and_zero_alpha_are_accepted():
    """neg_pos_ratio = 0 (positives only) and 0.5, and alpha = 0 (confidence only), are valid settings."""
    batch = _batch(2, positives=(3, 2))
    loss = MultiBoxLoss(neg_pos_ratio=0)
    loss.forward(*batch)
    assert loss.num_neg.tolist() == [0, 0] and not loss.neg_mask.any()
    loss = MultiBoxLoss(neg_pos_ratio=0.5)
    loss.forward(*batch)
    assert loss.num_neg.tolist() == [1, 1]                          # floor(1.5), floor(1.0)
    parts = MultiBoxLoss(alpha=0).forward(*batch)
    assert parts.loc > 0 and parts.total == parts.conf


def test_masks_are_unset_before_the_first_forward():
    loss = MultiBoxLoss()
    assert loss.pos_mask is None and loss.neg_mask is None and loss.num_neg is None


# -- mining ----------------------------------------------------------------------------------------------
def test_negatives_per_image_returns_int64():
    """Documented as an int64 array whatever the integer type of the counts."""
    k = negatives_per_image(np.array([0, 2, 7], np.int32), 10, 1.5)
    assert k.dtype == np.int64 and k.tolist() == [0, 3, 3]


def test_mining_an_empty_batch_selects_nothing():
    out = mine_hard_negatives(np.zeros((0, 5)), np.zeros((0, 5), bool), np.zeros(0, np.int64))
    assert out.shape == (0, 5) and out.dtype == np.bool_


@pytest.mark.parametrize("p", [65, 100, 300])
def test_a_single_negative_is_the_hardest_of_many_boxes(p):
    """K = max(num_neg) = 1 over rows longer than NumPy's small-array selection (the partition must
    place the K-th hardest, not the (K-1)-th)."""
    r = np.random.default_rng(p)
    bg = r.permutation(p).astype(np.float64)[None, :].repeat(3, axis=0)
    bg[1] = bg[1, ::-1]
    pos = np.zeros((3, p), bool)
    pos[2, int(np.argmax(bg[2]))] = True                           # the hardest box is a positive here
    num_neg = np.array([1, 1, 0])
    got = mine_hard_negatives(bg, pos, num_neg)
    np.testing.assert_array_equal(got, mine_hard_negatives_ref(bg, pos, num_neg))
    assert np.flatnonzero(got[0]).tolist() == [int(np.argmax(bg[0]))]


# -- precision: the sums are float64, the differences in loc's dtype ---------------------------------------
def test_float32_terms_are_summed_in_float64():
    """float32 inputs whose terms span 2^24: a float32 running sum would round the small terms away."""
    n, p = 1, 400
    loc = np.zeros((n, p, 4), np.float32)
    loc_t = np.zeros((n, p, 4), np.float32)
    conf = np.zeros((n, p, 2), np.float32)
    labels = np.ones((n, p), np.int64)                              # every box positive: no mining
    loc[0, :, :] = 0.5                                              # smooth L1 = 0.125 each
    loc[0, 0, 0] = 2.0 ** 24                                        # |x| - 0.5 rounds to 2^24 in float32
    conf[0, 0] = [0.0, -1.0e6]                                      # -log softmax = 1e6 exactly
    parts = MultiBoxLoss(neg_pos_ratio=0).forward(loc, conf, loc_t, labels)
    assert parts.num_pos == p
    assert parts.loc == (2.0 ** 24 + (4 * p - 1) * 0.125) / p       # the sum is exact in float64
    log2 = float(np.log(np.float32(2.0)))                           # -log softmax of two equal logits
    assert parts.conf * p == pytest.approx(1.0e6 + (p - 1) * log2, rel=1e-13, abs=0)


def test_float64_targets_are_cast_to_the_dtype_of_loc_before_the_difference():
    """loc float32 with loc_t float64: the loss is that of loc_t rounded to float32, to the last bit."""
    loc, conf, loc_t, labels = _batch(3, p=40, positives=(9, 7), dtype=np.float32)
    loc_t64 = np.random.default_rng(4).standard_normal(loc_t.shape) * 1.7
    a = MultiBoxLoss().forward(loc, conf, loc_t64, labels)
    b = MultiBoxLoss().forward(loc, conf, loc_t64.astype(np.float32), labels)
    assert a == b


# -- data parallel: the sums and N are all-reduced, bad inputs are reported on every rank ------------------
class _PairComm:
    """Rank ``rank`` of two threads that add their buffers through a barrier (counts its all-reduces)."""

    size = 2

    def __init__(self, rank, board):
        self.rank, self.board, self.calls = rank, board, 0

    def allreduce_sum_(self, buf):
        self.calls += 1
        b = self.board
        b["slots"][self.rank] = buf.copy()
        b["barrier"].wait()
        total = b["slots"][0] + b["slots"][1]
        b["barrier"].wait()
        buf[...] = total
        return buf


def _two_ranks(fn):
    """fn(comm) on two threads; returns [(result or None, exception or None)] by rank."""
    board = {"barrier": threading.Barrier(2, timeout=20), "slots": {}}
    out = [None, None]

    def run(rank):
        comm = _PairComm(rank, board)
        try:
            out[rank] = (fn(comm), None, comm.calls)
        except Exception as exc:  # noqa: BLE001  (checked by the caller)
            out[rank] = (None, exc, comm.calls)
            if not comm.calls:       # raised before the all-reduce: do not leave the other rank waiting
                board["barrier"].abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_two_ranks_report_the_global_batch_loss():
    """Each rank's parts are the whole batch's (N summed over ranks), after one all-reduce."""
    batch = _batch(5, n=4, p=30, positives=(4, 1, 0, 6))
    ref = MultiBoxLoss().forward(*batch)
    out = _two_ranks(lambda comm: MultiBoxLoss(comm=comm).forward(*(a[2 * comm.rank:2 * comm.rank + 2]
                                                                     for a in batch)))
    for parts, err, calls in out:
        assert err is None and calls == 1
        assert parts.num_pos == ref.num_pos == 11
        np.testing.assert_allclose(parts, ref, rtol=1e-13)


def test_a_one_process_comm_exchanges_nothing():
    class One:
        size, rank = 1, 0

        def allreduce_sum_(self, buf):
            raise AssertionError("a job of one process must not all-reduce")

    batch = _batch(6)
    assert MultiBoxLoss(comm=One()).forward(*batch) == MultiBoxLoss().forward(*batch)


@pytest.mark.parametrize("array", ["loc", "conf"])
def test_a_non_finite_input_on_one_rank_is_reported_by_both_after_the_all_reduce(array):
    """NaN in rank 1's loc (at a background box) or conf: rank 1 must not raise on its own before the
    all-reduce (rank 0 would wait forever); both raise, and rank 1 says it is among the bad ranks."""
    batch = list(_batch(7, n=2, p=20, positives=(2, 2)))
    i = ("loc", "conf").index(array)
    batch[i] = batch[i].copy()
    background = int(np.flatnonzero(batch[3][1] == 0)[0])
    batch[i][1, background, 0] = np.nan
    out = _two_ranks(lambda comm: MultiBoxLoss(comm=comm).forward(*(a[comm.rank:comm.rank + 1] for a in batch)))
    (_, err0, calls0), (_, err1, calls1) = out
    assert calls0 == calls1 == 1
    assert isinstance(err0, NonFiniteError) and isinstance(err1, NonFiniteError)
    assert str(err0) == "MultiBoxLoss: loc or conf holds NaN or inf on 1 of 2 ranks"
    assert str(err1) == "MultiBoxLoss: loc or conf holds NaN or inf on 1 of 2 ranks (rank 1 among them)"


def test_a_non_finite_target_on_one_rank_is_reported_by_both():
    batch = list(_batch(8, n=2, p=20, positives=(2, 2)))
    batch[2] = batch[2].copy()
    batch[2][0, int(np.flatnonzero(batch[3][0] > 0)[0]), 3] = np.inf      # rank 0, a positive box
    out = _two_ranks(lambda comm: MultiBoxLoss(comm=comm).forward(*(a[comm.rank:comm.rank + 1] for a in batch)))
    for _, err, calls in out:
        assert calls == 1 and isinstance(err, NonFiniteError)
        assert str(err) == "MultiBoxLoss: loc_t holds NaN or inf at a positive box"


def test_check_finite_off_lets_a_non_finite_rank_through():
    batch = list(_batch(9, n=2, p=20, positives=(2, 2)))
    batch[0] = batch[0].copy()
    batch[0][1, int(np.flatnonzero(batch[3][1] == 0)[0]), 0] = np.inf    # rank 1, a background box
    out = _two_ranks(lambda comm: MultiBoxLoss(check_finite=False, comm=comm).forward(
        *(a[comm.rank:comm.rank + 1] for a in batch)))
    assert [(err, calls) for _, err, calls in out] == [(None, 1), (None, 1)]
    assert out[0][0].num_pos == out[1][0].num_pos == 4

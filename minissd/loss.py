"""The MultiBox loss of SSD: softmax confidence loss + smooth L1 localisation loss, hard negatives.

Paper: section 2.2 "Training objective", eqs. (1)-(3), and "Hard negative mining".
Walkthrough: docs/06-loss.md.

For one batch, with ``x`` the matching (``labels`` > 0 marks a positive default box), ``c`` the class
logits, ``l`` the predicted offsets and ``g`` the encoded ground truth offsets::

    L = (L_conf + alpha * L_loc) / N                                               eq. (1)
    L_loc  = sum_{i in Pos} sum_{m in cx,cy,w,h} smoothL1(l_i^m - g_i^m)             eq. (2)
    L_conf = -sum_{i in Pos} log softmax(c_i)[label_i] - sum_{i in Neg} log softmax(c_i)[0]   eq. (3)

``N`` is the number of positives in the batch (``max(N, 1)`` so an empty batch stays finite). ``Neg``
is not every background box: per image, only the ``neg_pos_ratio`` x (number of positives) negatives
with the highest background loss ``-log softmax(c_i)[0]`` (hard negative mining). The selection is made
in the forward pass and held fixed in the backward pass, so the loss is differentiable on the region
where the selection does not change, and the gradient is::

    dL/dc_i = (softmax(c_i) - onehot(label_i)) / N     for i in Pos or Neg, 0 otherwise
    dL/dl_i = alpha * clip(l_i - g_i, -1, 1) / N         for i in Pos, 0 otherwise

Everything is batched array code on the device of the inputs (NumPy or CuPy); there is no loop over
priors or images.

Data-parallel training (``comm`` of size K > 1, each process holding a shard of the global batch): the
few host numbers of the forward pass (the two sums, N, the non-finite counts) are summed over the ranks
in one all-reduce, so ``N`` is the number of positives of the whole global batch and every rank's
gradient is d(its shard's terms)/N_global; their sum over the ranks is the one-process gradient.
A per-rank N would weight the ranks wrongly (docs/15-data-parallel.md). Mining is per image: unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .backend import get_array_module, is_gpu_array, to_cpu

__all__ = ["LossParts", "MultiBoxLoss", "NonFiniteError", "mine_hard_negatives", "mine_hard_negatives_ref",
           "negatives_per_image", "smooth_l1", "log_softmax"]


class LossParts(NamedTuple):
    """What `MultiBoxLoss.forward` returns.

    total: ``conf + alpha * loc``, the value `MultiBoxLoss.backward` differentiates (float)
    conf: ``L_conf / max(N, 1)`` (float)
    loc: ``L_loc / max(N, 1)``, without ``alpha`` (float)
    num_pos: ``N``, the number of positive default boxes in the batch (int)
    """

    total: float
    conf: float
    loc: float
    num_pos: int


class NonFiniteError(ValueError):
    """An input of the loss holds NaN or inf (a ValueError, so callers can catch either)."""


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def log_softmax(logits, axis: int = -1):
    """``logits - logsumexp(logits)`` along ``axis``, computed without overflow.

    The maximum is subtracted before ``exp`` so that logits of +-100 (or +-1e4) neither overflow nor
    lose the largest term: ``logsumexp(c) = m + log(sum(exp(c - m)))`` with ``m = max(c)``, and the
    sum is at least 1 because the largest term is ``exp(0)``.
    """
    xp = get_array_module(logits)
    m = xp.max(logits, axis=axis, keepdims=True)
    shifted = logits - m
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def smooth_l1(x):
    """Smooth L1 with beta = 1 (paper eq. (2), from Fast R-CNN): ``0.5 x^2`` if ``|x| < 1`` else ``|x| - 0.5``.

    Its derivative is ``clip(x, -1, 1)``.
    """
    xp = get_array_module(x)
    ax = xp.abs(x)
    return xp.where(ax < 1, 0.5 * x * x, ax - 0.5)


def negatives_per_image(num_pos, num_priors: int, neg_pos_ratio: float, min_negatives: int = 0):
    """How many negatives each image mines: ``min(max(floor(ratio * n_pos), min_negatives), P - n_pos)``.

    Parameters
    ----------
    num_pos : (N,) int array, positives per image.
    num_priors : P.
    neg_pos_ratio : negatives per positive (3 in the paper).
    min_negatives : a floor per image (0 by default: an image without positives mines nothing).

    Returns
    -------
    (N,) int64 array on the device of ``num_pos``.
    """
    xp = get_array_module(num_pos)
    num_pos = num_pos.astype(xp.int64)
    # floor, as the authors' Caffe code does with static_cast<int>(num_pos * ratio)
    k = xp.floor(num_pos * float(neg_pos_ratio)).astype(xp.int64)
    if min_negatives:
        k = xp.maximum(k, int(min_negatives))
    return xp.minimum(k, num_priors - num_pos)


def mine_hard_negatives(bg_loss, pos_mask, num_neg):
    """Per image, the ``num_neg[i]`` negatives with the highest background loss; ties to the lower index.

    Paper: section 2.2, "Hard negative mining".

    Parameters
    ----------
    bg_loss : (N, P) float, the loss ``-log softmax(c)[0]`` of calling each box background (>= 0).
    pos_mask : (N, P) bool, positive boxes (never selected).
    num_neg : (N,) int, how many negatives to select per image; at most the number of negatives.

    Returns
    -------
    (N, P) bool mask of the selected negatives.

    Notes
    -----
    No full sort over P: one ``partition`` finds the ``K = max(num_neg)`` largest losses of every row,
    only those ``K`` are sorted, which gives each image's threshold ``t_i`` (its ``num_neg[i]``-th
    largest loss). The selection is then ``loss > t_i``, plus as many boxes with ``loss == t_i`` as
    are still needed, taken in prior order (a cumulative count), so exact ties are broken by the lower
    prior index, deterministically, on CPU and GPU alike. `mine_hard_negatives_ref` is the plain
    stable-sort twin this must equal.
    """
    xp = get_array_module(bg_loss)
    n, p = bg_loss.shape
    num_neg = num_neg.astype(xp.int64)
    k_max = int(to_cpu(num_neg.max())) if n else 0
    if k_max <= 0:
        return xp.zeros((n, p), dtype=bool)
    # Positives can never be picked: -inf ranks below every (finite, >= 0) background loss.
    score = xp.where(pos_mask, -xp.inf, bg_loss)
    neg_score = -score                                             # (N, P), ascending = hardest first
    if k_max < p:
        top = xp.partition(neg_score, k_max - 1, axis=1)[:, :k_max]   # (N, K) the K hardest, unordered
    else:
        top = neg_score
    top = xp.sort(top, axis=1)                                     # (N, K) hardest first
    kth = xp.take_along_axis(top, xp.maximum(num_neg - 1, 0)[:, None], axis=1)  # (N, 1)
    # An image that mines nothing gets threshold +inf (its scores are finite or -inf, never +inf).
    thr = xp.where(num_neg[:, None] > 0, -kth, xp.inf)             # (N, 1)
    above = score > thr                                            # (N, P) strictly harder: all taken
    at = score == thr                                              # (N, P) ties at the threshold
    still_needed = num_neg - above.sum(axis=1)                     # (N,)
    order_among_ties = xp.cumsum(at, axis=1)                       # (N, P) 1, 2, ... in prior order
    return above | (at & (order_among_ties <= still_needed[:, None]))


def mine_hard_negatives_ref(bg_loss, pos_mask, num_neg):
    """NumPy twin of `mine_hard_negatives`: a stable sort of every row by descending loss."""
    bg_loss = to_cpu(bg_loss)
    pos_mask = to_cpu(pos_mask)
    num_neg = to_cpu(num_neg)
    n, p = bg_loss.shape
    out = np.zeros((n, p), dtype=bool)
    for i in range(n):
        score = np.where(pos_mask[i], -np.inf, bg_loss[i])
        order = np.argsort(-score, kind="stable")   # hardest first; equal losses keep prior order
        out[i, order[: int(num_neg[i])]] = True
    return out


class MultiBoxLoss:
    """SSD's training objective (paper eqs. (1)-(3)) with hard negative mining, forward and backward.

    Paper: section 2.2, eqs. (1)-(3) and "Hard negative mining".
    Walkthrough: docs/06-loss.md.

    Parameters
    ----------
    neg_pos_ratio : float
        Negatives kept per positive, per image (3 in the paper).
    alpha : float
        Weight of the localisation loss (1 in the paper).
    min_negatives : int, keyword-only
        A floor on the negatives mined per image. The default 0 follows the paper and the authors'
        code: an image without positives contributes no confidence terms, so a batch without any
        positives has loss exactly 0 and zero gradients (a harmless no-op step, rather than a step on
        a sum of hard negatives that the normaliser ``max(N, 1) = 1`` does not scale down). Set it to
        a few (say 3-10) when the data holds many images without objects and the detector should
        learn from their false positives too. See docs/06-loss.md.
    check_finite : bool, keyword-only
        Raise `NonFiniteError` (a ValueError) naming the argument when ``loc``, ``conf`` or the
        positives' ``loc_t`` hold NaN/inf. One extra pass over the inputs; on by default.
    comm : `minissd.distributed.Communicator` or None, keyword-only
        For data-parallel training: sums, N and the finiteness checks are all-reduced, so the returned
        parts are the global batch's, and `NonFiniteError` is raised on every rank together (a rank
        that raised alone would leave the others waiting in the all-reduce). None or size 1: nothing
        is exchanged.

    Attributes set by `forward` (read them for plots and tests)
    ----------------------------------------------------------
    pos_mask : (N, P) bool, positive boxes (``labels > 0``).
    neg_mask : (N, P) bool, the mined negatives.
    num_neg : (N,) int64, the number of mined negatives per image.

    Examples
    --------
    >>> loss = MultiBoxLoss()
    >>> parts = loss.forward(loc, conf, loc_t, labels)    # doctest: +SKIP
    >>> d_loc, d_conf = loss.backward()                   # doctest: +SKIP
    """

    def __init__(self, neg_pos_ratio: float = 3.0, alpha: float = 1.0, *, min_negatives: int = 0,
                 check_finite: bool = True, comm=None):
        neg_pos_ratio = float(neg_pos_ratio)
        alpha = float(alpha)
        if not np.isfinite(neg_pos_ratio) or neg_pos_ratio < 0:
            raise ValueError(f"MultiBoxLoss: neg_pos_ratio must be a finite number >= 0, got {neg_pos_ratio}")
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"MultiBoxLoss: alpha must be a finite number >= 0, got {alpha}")
        if int(min_negatives) != min_negatives or min_negatives < 0:
            raise ValueError(f"MultiBoxLoss: min_negatives must be an integer >= 0, got {min_negatives!r}")
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha
        self.min_negatives = int(min_negatives)
        self.check_finite = bool(check_finite)
        self.comm = comm
        self._cache = None
        self.pos_mask = self.neg_mask = self.num_neg = None

    def __repr__(self):
        return (f"MultiBoxLoss(neg_pos_ratio={self.neg_pos_ratio}, alpha={self.alpha}, "
                f"min_negatives={self.min_negatives})")

    # -- forward -------------------------------------------------------------------------------
    def forward(self, loc, conf, loc_t, labels) -> LossParts:
        """The loss of one batch.

        Parameters
        ----------
        loc : (N, P, 4) float32/float64, predicted offsets ``l``.
        conf : (N, P, M) float32/float64, class logits ``c`` (M = C + 1, background is class 0).
        loc_t : (N, P, 4) float, encoded matched ground truth ``g`` (only positives are read, so
            background boxes may hold anything, even inf).
        labels : (N, P) integer, matched class per default box, 0 = background, in [0, M).

        Returns
        -------
        LossParts(total, conf, loc, num_pos): three Python floats and an int.
        """
        distributed = self.comm is not None and self.comm.size > 1
        # Distributed: a bad input is reported after the all-reduce, by every rank at once.
        xp, inputs_ok = self._check(loc, conf, loc_t, labels, defer_finite=distributed)
        n, p, _ = conf.shape
        labels = labels.astype(xp.int64, copy=False)
        pos = labels > 0                                            # (N, P)
        num_pos_img = pos.sum(axis=1)                               # (N,)

        # Class-major layout: reductions over M = C + 1 (a short axis) run as M - 1 element-wise
        # passes over contiguous (N, P) planes, ~20x faster in NumPy than reducing the last axis.
        ct = xp.ascontiguousarray(xp.moveaxis(conf, 2, 0))          # (M, N, P)
        cmax = ct.max(axis=0)                                       # (N, P)
        e = ct - cmax                                               # (M, N, P) new array
        xp.exp(e, out=e)                                            # exp(c - max): no overflow
        s = e.sum(axis=0)                                           # (N, P) in [1, M]
        lse = cmax + xp.log(s)                                      # (N, P) log-sum-exp
        # Flat index of (label[i], i) in the (M, N*P) layout: one gather, reused by backward.
        label_idx = labels.reshape(-1) * (n * p) + xp.arange(n * p)  # (N*P,)
        c_label = xp.take(ct.reshape(-1), label_idx).reshape(n, p)  # (N, P) logit of the label
        ce = lse - c_label                                          # (N, P) -log softmax(c)[label]
        bg_loss = lse - ct[0]                                       # (N, P) -log softmax(c)[0]

        num_neg = negatives_per_image(num_pos_img, p, self.neg_pos_ratio, self.min_negatives)
        neg = mine_hard_negatives(bg_loss, pos, num_neg)
        selected = pos | neg

        # Localisation: smooth L1 on the positives only, gathered first, so that whatever the
        # targets hold at background boxes (even inf from encoding an empty match) never enters.
        pos_idx = xp.flatnonzero(pos)                               # (N_pos,) into N * P
        diff = loc.reshape(-1, 4)[pos_idx] - loc_t.reshape(-1, 4)[pos_idx].astype(loc.dtype)  # (N_pos, 4)
        loc_sum = xp.sum(smooth_l1(diff), dtype=xp.float64)
        conf_sum = xp.sum(xp.where(selected, ce, 0), dtype=xp.float64)
        # One device -> host copy for the numbers.
        host = to_cpu(xp.stack([
            conf_sum, loc_sum, xp.asarray(pos_idx.size, dtype=xp.float64),
            xp.isfinite(diff).all().astype(xp.float64)]))                # (4,) float64
        if distributed:
            host = self._allreduce(host, inputs_ok)
        conf_sum, loc_sum, num_pos, t_ok = (float(v) for v in host)
        if self.check_finite and not t_ok:
            raise NonFiniteError("MultiBoxLoss: loc_t holds NaN or inf at a positive box")
        num_pos = int(num_pos)
        norm = float(max(num_pos, 1))

        self.pos_mask, self.neg_mask, self.num_neg = pos, neg, num_neg
        self._cache = dict(e=e, s=s, label_idx=label_idx, selected=selected, pos_idx=pos_idx, diff=diff,
                           norm=norm, loc_shape=loc.shape, loc_dtype=loc.dtype, conf_dtype=conf.dtype)
        conf_loss = conf_sum / norm
        loc_loss = loc_sum / norm
        return LossParts(conf_loss + self.alpha * loc_loss, conf_loss, loc_loss, num_pos)

    __call__ = forward

    def _allreduce(self, host, inputs_ok: bool):
        """The global [conf_sum, loc_sum, N, targets finite] from every rank's, in one all-reduce."""
        buf = np.array([host[0], host[1], host[2], 1.0 - host[3], 0.0 if inputs_ok else 1.0],
                       dtype=np.float64)       # sums, N, ranks with bad targets, ranks with bad inputs
        self.comm.allreduce_sum_(buf)
        if self.check_finite and buf[4]:
            raise NonFiniteError(f"MultiBoxLoss: loc or conf holds NaN or inf on {int(buf[4])} of "
                                 f"{self.comm.size} ranks" + ("" if inputs_ok else f" (rank {self.comm.rank} "
                                                                                   "among them)"))
        return buf[0], buf[1], buf[2], float(buf[3] == 0)

    # -- backward ------------------------------------------------------------------------------
    def backward(self):
        """Gradients of ``total`` with the mined selection of the last `forward` held fixed.

        Returns
        -------
        d_loc : (N, P, 4), ``alpha * clip(l - g, -1, 1) / max(N, 1)`` on positives, 0 elsewhere.
        d_conf : (N, P, M), ``(softmax(c) - onehot(label)) / max(N, 1)`` on positives and mined
            negatives, 0 elsewhere.
        Both C-contiguous, in the dtype of the corresponding input, on its device.
        """
        if self._cache is None:
            raise RuntimeError("MultiBoxLoss.backward() called before forward()")
        c = self._cache
        e, s, norm = c["e"], c["s"], c["norm"]
        xp = get_array_module(e)
        n, p = s.shape
        # d(-log softmax(c)[y]) / dc = softmax(c) - onehot(y), times the weight 1/N of a selected term.
        w = c["selected"] * (1.0 / norm)                            # (N, P) float64
        g = e * (w / s).astype(c["conf_dtype"])                     # (M, N, P) softmax * w
        g.reshape(-1)[c["label_idx"]] -= w.reshape(-1).astype(c["conf_dtype"])   # indices are unique
        d_conf = xp.ascontiguousarray(xp.moveaxis(g, 0, 2))         # (N, P, M)
        # d smoothL1(x) / dx = clip(x, -1, 1)
        d_loc = xp.zeros(c["loc_shape"], dtype=c["loc_dtype"])
        d_loc.reshape(-1, 4)[c["pos_idx"]] = xp.clip(c["diff"], -1, 1) * (self.alpha / norm)
        return d_loc, d_conf

    # -- input checks --------------------------------------------------------------------------
    def _check(self, loc, conf, loc_t, labels, defer_finite: bool = False):
        """Check the inputs; returns ``(xp, finite)``. Shape/dtype/label errors raise at once; NaN/inf
        in loc or conf raise `NonFiniteError` unless ``defer_finite`` (then ``finite`` says it)."""
        arrays = {"loc": loc, "conf": conf, "loc_t": loc_t, "labels": labels}
        for name, a in arrays.items():
            if not (isinstance(a, np.ndarray) or is_gpu_array(a)):
                raise ValueError(f"MultiBoxLoss: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
        on_gpu = {name: is_gpu_array(a) for name, a in arrays.items()}
        if len(set(on_gpu.values())) > 1:
            where = ", ".join(f"{k} on {'GPU' if v else 'CPU'}" for k, v in on_gpu.items())
            raise ValueError(f"MultiBoxLoss: inputs must be on one device ({where})")
        xp = get_array_module(loc, conf, loc_t, labels)

        if loc.ndim != 3 or loc.shape[2] != 4:
            raise ValueError(f"MultiBoxLoss: loc must have shape (N, P, 4), got {loc.shape}")
        n, p = loc.shape[:2]
        if conf.ndim != 3 or conf.shape[:2] != (n, p) or conf.shape[2] < 2:
            raise ValueError(f"MultiBoxLoss: conf must have shape (N, P, M) = ({n}, {p}, M>=2) to match loc, "
                             f"got {conf.shape}")
        if loc_t.shape != loc.shape:
            raise ValueError(f"MultiBoxLoss: loc_t must have the shape of loc {loc.shape}, got {loc_t.shape}")
        if labels.shape != (n, p):
            raise ValueError(f"MultiBoxLoss: labels must have shape (N, P) = {(n, p)}, got {labels.shape}")
        for name in ("loc", "conf", "loc_t"):
            dt = arrays[name].dtype
            if dt not in _FLOAT_DTYPES:
                raise ValueError(f"MultiBoxLoss: {name} must be float32 or float64, got {dt}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"MultiBoxLoss: labels must be an integer array, got {labels.dtype}")
        if labels.size == 0 or loc.size == 0:
            raise ValueError(f"MultiBoxLoss: empty batch (loc shape {loc.shape})")

        # All checks reduce on the device and come back in one copy.
        m = conf.shape[2]
        checks = [labels.min().astype(xp.int64), labels.max().astype(xp.int64)]
        if self.check_finite:
            # loc_t is checked in forward, at the positives only (background targets are never read).
            checks += [xp.isfinite(loc).all().astype(xp.int64), xp.isfinite(conf).all().astype(xp.int64)]
        got = [int(v) for v in to_cpu(xp.stack(checks))]
        if got[0] < 0 or got[1] >= m:
            raise ValueError(f"MultiBoxLoss: labels must lie in [0, {m - 1}] for M = {m} classes "
                             f"(0 = background), got values in [{got[0]}, {got[1]}]")
        if self.check_finite and not defer_finite:
            for name, ok in zip(("loc", "conf"), got[2:], strict=True):
                if not ok:
                    raise NonFiniteError(f"MultiBoxLoss: {name} holds NaN or inf")
        return xp, all(got[2:])

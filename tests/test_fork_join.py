"""The fork-join pool of csrc/im2col.pyx (minissd.nn.threads.fork_join): each ``pool_*`` job kind against
its plain twin (NumPy, or the serial kernel), bit for bit, and the pool's behaviour around threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import GEMM_KINDS, gemm_set_to, threads_set_to
from minissd.nn import Conv2d
from minissd.nn import threads as threads_mod
from minissd.nn.gemm import matmul
from minissd.nn.im2col import col2im_ref, im2col_ref


@pytest.fixture(params=GEMM_KINDS)
def fj(request):
    """The kernels with a pool of 3 workers (4 threads), whatever the machine has, with each float32 GEMM
    (the twin of a pool GEMM is then `minissd.nn.gemm.matmul`, which follows the same choice)."""
    with gemm_set_to(request.param), threads_set_to(4):
        k = threads_mod.fork_join()
        if k is None:
            pytest.fail("numpy's OpenBLAS entry points were not found: the fork-join pool is unavailable")
        yield k


def _bounds(total, parts):
    return [total * i // parts for i in range(parts + 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_pool_gemm_is_numpy_matmul_bit_for_bit(fj, dtype, ta, tb, rng):
    M, K, N = 7, 33, 50
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    A, B = (A.T if ta else A), (B.T if tb else B)
    want = np.empty((M, N), dtype)
    for a, b in zip(_bounds(N, 4), _bounds(N, 4)[1:], strict=False):     # serially, range by range
        matmul(A, B[:, a:b], out=want[:, a:b])
    for parts in (1, 2, 4, 9):
        out = np.full((M, N), np.nan, dtype)
        fj.pool_gemm(A, B, out, _bounds(N, parts))
        np.testing.assert_allclose(out, A.astype(np.float64) @ B.astype(np.float64), rtol=1e-4, atol=1e-4)
        if parts == 4:
            assert np.array_equal(out, want)
    want_rows = np.empty((M, N), dtype)
    for a, b in zip(_bounds(M, 3), _bounds(M, 3)[1:], strict=False):     # serially, row block by row block
        matmul(A[a:b], B, out=want_rows[a:b])
    out = np.full((M, N), np.nan, dtype)
    fj.pool_gemm(A, B, out, _bounds(M, 3), split_rows=True)
    assert np.array_equal(out, want_rows)


def test_pool_gemm_writes_empty_ranges_nowhere_and_refuses_bad_layouts(fj, rng):
    A = rng.standard_normal((3, 4)).astype(np.float32)
    B = rng.standard_normal((4, 5)).astype(np.float32)
    out = np.full((3, 5), np.nan, np.float32)
    fj.pool_gemm(A, B, out, [0, 0, 2, 2, 5])
    np.testing.assert_allclose(out, A @ B, rtol=1e-6)
    with pytest.raises(ValueError, match="B must be row-major or a row-major matrix transposed"):
        fj.pool_gemm(A, np.zeros((8, 10), np.float32)[::2, ::2], out, [0, 5])
    with pytest.raises(ValueError, match="C must be row-major"):
        fj.pool_gemm(A, B, np.zeros((5, 3), np.float32).T, [0, 5])
    with pytest.raises(ValueError, match="shapes"):
        fj.pool_gemm(A, B.T, out, [0, 5])
    with pytest.raises(ValueError, match="bounds must run from 0 to the number of columns"):
        fj.pool_gemm(A, B, out, [0, 4])
    with pytest.raises(ValueError, match="bounds must run from 0 to the number of rows"):
        fj.pool_gemm(A, B, out, [0, 5], split_rows=True)
    out[...] = np.nan
    fj.pool_gemm(A, B, out, [0, 1, 1, 3], split_rows=True)
    np.testing.assert_allclose(out, A @ B, rtol=1e-6)
    with pytest.raises(ValueError, match="a region takes 1..64 ranges"):
        fj.pool_gemm(A, B, out, list(range(66)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_gemm_parts_are_the_split_products(fj, dtype, rng):
    F, R, K = 6, 11, 40
    A = rng.standard_normal((F, K)).astype(dtype)
    B = rng.standard_normal((R, K)).astype(dtype)
    bounds = [0, 7, 7, 25, 40]
    parts = np.full((4, F, R), np.nan, dtype)
    fj.pool_gemm_parts(A, B, parts, bounds)
    for t in range(4):
        a, b = bounds[t], bounds[t + 1]
        assert np.array_equal(parts[t], matmul(A[:, a:b], B[:, a:b].T))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geo", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (1, 1, 0, 1), (2, 2, 0, 1)])
@pytest.mark.parametrize("rows_first", [False, True])
def test_pool_im2col_and_col2im_match_the_serial_kernels_and_the_twins(fj, dtype, geo, rows_first, rng):
    k_, s, p, d = geo
    x = rng.standard_normal((3, 5, 9, 8)).astype(dtype)
    col = im2col_ref(x, k_, s, p, d)                                   # (N, R, P)
    N, R, P = col.shape
    want_col = col.transpose(1, 0, 2).copy() if rows_first else col
    got = np.full(want_col.shape, np.nan, dtype)
    fj.pool_im2col(x, got, k_, k_, s, s, p, p, d, d, rows_first, _bounds(N * R, 3))
    assert np.array_equal(got, want_col)
    serial = np.empty_like(got)
    fj.im2col(x, serial, k_, k_, s, s, p, p, d, d, rows_first)
    assert np.array_equal(got, serial)

    r = rng.standard_normal(want_col.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    fj.pool_col2im(r, dx, k_, k_, s, s, p, p, d, d, rows_first, _bounds(3 * 5, 4))
    serial_dx = np.empty_like(dx)
    fj.col2im(r, serial_dx, k_, k_, s, s, p, p, d, d, rows_first)
    assert np.array_equal(dx, serial_dx)
    r_nrp = r.transpose(1, 0, 2) if rows_first else r
    np.testing.assert_allclose(dx, col2im_ref(r_nrp, x.shape, k_, s, p, d), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_pool_rows_is_the_strided_copy_plus_bias(fj, dtype, with_bias, rng):
    F, m, P = 5, 7, 6
    src = rng.standard_normal((F, m, P)).astype(dtype).transpose(1, 0, 2)      # (m, F, P) view
    bias = rng.standard_normal(F).astype(dtype) if with_bias else None
    dst = np.full((m, F, P), np.nan, dtype)
    fj.pool_rows(src, dst, bias, F, P, [0, 2, 2, 7])
    want = src + bias.reshape(1, F, 1) if with_bias else src
    assert np.array_equal(dst, want)
    back = np.full((F, m, P), np.nan, dtype)                                    # the other direction
    fj.pool_rows(dst, back.transpose(1, 0, 2), None, F, P, [0, 3, 7])
    assert np.array_equal(back.transpose(1, 0, 2), dst)


def _conv_step(seed, threads=None):
    rng = np.random.default_rng(seed)
    conv = Conv2d(16, 6, 3, padding=1, rng=rng)                        # F < C: the heads' dx path too
    x = rng.standard_normal((4, 16, 12, 12)).astype(np.float32)
    dy = rng.standard_normal((4, 6, 12, 12)).astype(np.float32)
    y = conv.forward(x)
    dx = conv.backward(dy)
    return [y, dx, conv.grads["W"].copy(), conv.grads["b"].copy()]


def test_a_worker_that_never_wakes_costs_nothing_but_its_share(fj, rng):
    """Jobs are claimed one at a time by whoever is free: with workers counted but none running, the
    caller runs every job itself and the results are the same."""
    want = _conv_step(0)
    try:
        threads_mod._stop_fork_join()                     # joins the workers and resets the pool
        fj.pool_set_workers(3)                            # ... then claims 3 that never start
        threads_mod._FORK_JOIN["threads"] = [None] * 3    # fork_join() believes they run
        got = _conv_step(0)
    finally:
        threads_mod._FORK_JOIN["threads"] = []
        fj.pool_set_workers(0)
    for a, b in zip(want, got, strict=True):
        assert np.array_equal(a, b)


def test_two_python_threads_may_use_the_layers_at_once(fj):
    """One region at a time runs on the pool; a second caller runs its jobs serially meanwhile."""
    want = {s: _conv_step(s) for s in range(2)}
    errors, results = [], {}

    def worker(seed):
        try:
            for _ in range(15):
                results[seed] = _conv_step(seed)
                for a, b in zip(want[seed], results[seed], strict=True):
                    assert np.array_equal(a, b)
        except BaseException as err:                      # reported below
            errors.append(err)

    ts = [threading.Thread(target=worker, args=(s,)) for s in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    assert not errors, errors[0]


def test_without_the_blas_entry_points_the_layers_use_the_python_pool(monkeypatch):
    old = threads_mod.get_num_threads()
    try:
        threads_mod.set_num_threads(2)
        want = _conv_step(3)
        monkeypatch.setitem(threads_mod._FORK_JOIN, "blas", False)
        threads_mod.set_num_threads(2)
        assert threads_mod.fork_join() is None
        got = _conv_step(3)
    finally:
        monkeypatch.undo()
        threads_mod.set_num_threads(old)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)   # same ranges; dW parts summed alike


def test_a_forked_child_gets_a_working_fork_join_pool(fj, in_forked_child):
    want = _conv_step(5)                                  # the pool runs now
    in_forked_child(lambda: all(np.array_equal(a, b) for a, b in zip(want, _conv_step(5), strict=True)),
                    "the inherited fork-join pool")


def test_the_benchmark_switch_hides_the_pool(fj, monkeypatch):
    """benchmarks/threads.py times the Python pool by turning the fork-join pool off this way."""
    assert threads_mod.fork_join() is fj
    monkeypatch.setitem(threads_mod._FORK_JOIN, "enabled", False)
    assert threads_mod.fork_join() is None

"""minissd's own float32 GEMM (csrc/sgemm.h, minissd/nn/gemm.py) against its plain twin, numpy.matmul.

The packing and blocking are checked through the portable micro-kernel on every machine; the AVX-512
micro-kernel where the CPU has AVX-512F. Shapes cross the tile (8 x 48) and block (KC 192, MC 256,
NC 3072) edges, every operand layout the layers use (row-major and ``.T`` views), and beta 0, 1 and
another value."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import GEMM_KINDS, gemm_set_to, given, own_gemm_supported, settings, st, threads_set_to
from minissd.nn import Conv2d
from minissd.nn import threads as threads_mod
from minissd.nn.gemm import matmul
from minissd.nn.threads import cpu_kernels

SIMD = [False, pytest.param(True, marks=pytest.mark.skipif(not own_gemm_supported(),
                                                           reason="AVX-512F: not on this CPU"))]


def _operands(rng, M, N, K, ta, tb):
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    return (A.T if ta else A), (B.T if tb else B)


def _close(got, A, B, extra=0.0):
    """Within float32 rounding of the float64 product: |err| <= 4 eps sqrt(K) max|a||b| row by column."""
    want = A.astype(np.float64) @ B.astype(np.float64) + extra
    scale = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64) + np.abs(extra)
    tol = 4 * np.finfo(np.float32).eps * np.sqrt(max(A.shape[1], 1)) * scale + 1e-30
    assert np.all(np.abs(got - want) <= tol), float(np.max(np.abs(got - want) - tol))


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (8, 48, 192), (9, 49, 193), (7, 47, 191), (16, 27, 1000),
                                     (257, 97, 5), (3, 3100, 20), (40, 3072 + 48 + 1, 385), (1152, 130, 32)])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_own_sgemm_is_the_product_across_tile_and_block_edges(simd, M, N, K, ta, tb, rng):
    A, B = _operands(rng, M, N, K, ta, tb)
    C = np.full((M, N), np.nan, np.float32)
    cpu_kernels().own_sgemm(A, B, C, simd=simd)
    _close(C, A, B)


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_own_sgemm_beta_adds_onto_c_and_zero_overwrites_nan(simd, beta, rng):
    A, B = _operands(rng, 13, 100, 400, False, True)
    C0 = rng.standard_normal((13, 100)).astype(np.float32)
    C = C0.copy()
    if beta == 0.0:
        C[...] = np.nan                             # beta 0 must not read C (NaN * 0 would stay NaN)
    cpu_kernels().own_sgemm(A, B, C, beta, simd=simd)
    _close(C, A, B, 0.0 if beta == 0.0 else beta * C0.astype(np.float64))


@pytest.mark.parametrize("simd", SIMD)
def test_own_sgemm_writes_only_its_block_of_a_wider_c(simd, rng):
    """C a column block of a wider row-major array (ldc > N): the columns around it stay untouched."""
    A, B = _operands(rng, 11, 50, 30, False, False)
    big = np.full((11, 120), 7.0, np.float32)
    cpu_kernels().own_sgemm(A, B, big[:, 33:83], simd=simd)
    _close(big[:, 33:83], A, B)
    assert np.all(big[:, :33] == 7.0) and np.all(big[:, 83:] == 7.0)


@pytest.mark.parametrize("simd", SIMD)
def test_own_sgemm_empty_shapes_and_bad_layouts(simd, rng):
    k = cpu_kernels()
    C = np.full((3, 4), np.nan, np.float32)
    k.own_sgemm(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), C, simd=simd)
    assert np.all(C == 0.0)                          # an empty sum
    k.own_sgemm(np.zeros((0, 5), np.float32), np.zeros((5, 4), np.float32), np.zeros((0, 4), np.float32),
                simd=simd)
    with pytest.raises(ValueError, match="shapes"):
        k.own_sgemm(np.zeros((3, 5), np.float32), np.zeros((4, 4), np.float32), C, simd=simd)
    with pytest.raises(ValueError, match="B must be row-major"):
        k.own_sgemm(np.zeros((3, 4), np.float32), np.zeros((8, 8), np.float32)[::2, ::2], C, simd=simd)
    with pytest.raises(ValueError, match="C must be row-major"):
        k.own_sgemm(np.zeros((3, 4), np.float32), np.zeros((4, 4), np.float32), np.zeros((4, 3), np.float32).T,
                    simd=simd)


@settings(max_examples=60, deadline=None)
@given(M=st.integers(1, 70), N=st.integers(1, 150), K=st.integers(1, 420), ta=st.booleans(), tb=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_portable_and_simd_kernels_agree_with_numpy(M, N, K, ta, tb, seed):
    rng = np.random.default_rng(seed)
    A, B = _operands(rng, M, N, K, ta, tb)
    for simd in ([False, True] if own_gemm_supported() else [False]):
        C = np.full((M, N), np.nan, np.float32)
        cpu_kernels().own_sgemm(A, B, C, simd=simd)
        _close(C, A, B)


@pytest.mark.parametrize("kind", GEMM_KINDS)
def test_matmul_follows_the_choice_and_falls_back_for_other_dtypes_and_layouts(kind, rng):
    A, B = _operands(rng, 12, 60, 70, True, False)
    with gemm_set_to(kind):
        assert threads_mod.get_gemm() == kind
        got = matmul(A, B)
        _close(got, A, B)
        want = np.empty_like(got)
        if kind == "avx512":
            cpu_kernels().own_sgemm(A, B, want)
        else:
            np.matmul(A, B, out=want)
        assert np.array_equal(got, want)
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        assert np.array_equal(matmul(A64, B64), np.matmul(A64, B64))      # float64: always the BLAS
        strided = np.ascontiguousarray(B)[:, ::2]                          # not a BLAS layout
        np.testing.assert_array_equal(matmul(A, strided), np.matmul(A, strided))


def test_set_gemm_checks_its_argument_and_the_cpu(monkeypatch):
    with pytest.raises(ValueError, match="kind must be one of auto, blas, avx512"):
        threads_mod.set_gemm("mkl")
    with gemm_set_to("blas"):
        assert not cpu_kernels().own_sgemm_enabled()
        if not own_gemm_supported():
            with pytest.raises(ValueError, match="needs a CPU with AVX-512F"):
                threads_mod.set_gemm("avx512")
        assert threads_mod.set_gemm("auto") == ("avx512" if own_gemm_supported() else "blas")
        monkeypatch.setattr(threads_mod, "_GEMM", {"kind": None})
        monkeypatch.setenv("MINISSD_GEMM", "fast")
        with pytest.raises(ValueError, match="MINISSD_GEMM='fast'"):
            threads_mod.get_gemm()
        monkeypatch.setenv("MINISSD_GEMM", "blas")
        assert threads_mod.get_gemm() == "blas"


@pytest.mark.skipif(not own_gemm_supported(), reason="AVX-512F: not on this CPU")
@pytest.mark.parametrize("threads", [1, 2])
def test_a_conv_layer_on_the_own_gemm_is_the_layer_on_the_blas(threads, rng):
    """Forward and backward of a layer on each GEMM (the blocked path of a large map, the whole-batch path
    of a small one, and a head with fewer filters than channels): the same up to float32 rounding."""
    for shape, F in (((4, 3, 64, 64), 16), ((2, 32, 8, 8), 64), ((3, 64, 4, 4), 12)):
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal((shape[0], F, shape[2], shape[3])).astype(np.float32)
        results = []
        for kind in ("blas", "avx512"):
            with gemm_set_to(kind), threads_set_to(threads):
                conv = Conv2d(shape[1], F, 3, padding=1, rng=np.random.default_rng(0))
                y = conv.forward(x)
                dx = conv.backward(dy)
                results.append((y, dx, conv.grads["W"].copy(), conv.grads["b"].copy()))
        for a, b in zip(results[0], results[1], strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))

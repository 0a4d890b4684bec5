"""The matrix product of the CPU layers: numpy's BLAS (the plain twin) or minissd's AVX-512 GEMM.

Convolution is a GEMM after im2col (docs/06-convolution.md), so the GEMM decides the speed of a
training step. numpy's OpenBLAS is a fine GEMM, but this project's environment sets
OPENBLAS_CORETYPE=Haswell, which keeps it on its AVX2 kernels: on a core with full-width AVX-512
(Zen 5, Intel server cores) that is half the float32 peak. csrc/sgemm.h is a small GotoBLAS-style
GEMM (packed panels, an 8 x 48 register tile, AVX-512 FMAs) that the CPU layers call instead for
float32 where the CPU has AVX-512F; `minissd.nn.threads.set_gemm` (or ``$MINISSD_GEMM``) chooses,
and tests/test_sgemm.py checks it against ``numpy.matmul``.
"""
from __future__ import annotations

import numpy as np

from .threads import cpu_kernels, get_gemm


def matmul(A, B, out=None):
    """``out = A @ B`` for 2-D NumPy arrays: by the own GEMM for float32 where `get_gemm` says
    "avx512" and the layouts allow (row-major, or a ``.T`` view of row-major, operands; a row-major
    ``out``: the kernel's own check, which refuses other layouts with a ValueError), else by
    ``numpy.matmul``. Returns ``out``."""
    if out is None:
        out = np.empty((A.shape[0], B.shape[1]), dtype=np.result_type(A, B))
    if A.dtype == B.dtype == out.dtype == np.float32 and A.ndim == B.ndim == 2 and get_gemm() == "avx512":
        try:
            cpu_kernels().own_sgemm(A, B, out)
            return out
        except ValueError:                   # a layout the kernel does not take (or bad shapes: numpy says)
            pass
    np.matmul(A, B, out=out)
    return out

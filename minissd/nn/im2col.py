"""im2col / col2im: the unrolling that turns a convolution into one matrix product (minissd/nn/conv.py).

``im2col`` copies, for every output pixel, the C*KH*KW input values under the filter into one column:

    col = im2col(x)          # (N, C*KH*KW, OH*OW); row (c*KH + kh)*KW + kw, column oh*OW + ow holds
                             # x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW] (zero outside the image)

``col2im`` is its transpose (adjoint) as a linear map, ``<im2col(x), r> == <x, col2im(r)>`` for every
x, r (tests/test_conv.py proves it to 1e-12): each column entry is added back onto the pixel it was
read from. Backward of a convolution needs exactly that.

Three implementations share one layout: the plain NumPy twins `im2col_ref` / `col2im_ref` (loops over
the KH*KW kernel taps, easy to read), the Cython kernels in csrc/im2col.pyx (the CPU path, run on the
threads of minissd/nn/threads.py) and the CuPy kernels in minissd/nn/cuda_kernels.py (the GPU path).
`im2col` / `col2im` pick by the array's device.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .checks import check_float, pair
from .threads import cpu_kernels, fork_join, parallel_for, split


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1 (may be <= 0: no output)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_geometry(x_shape, kernel_size, stride, padding, dilation):
    """Checked sizes ``(N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW)``; ValueError when
    the input is too small to give any output."""
    N, C, H, W = (int(s) for s in x_shape)
    KH, KW = pair(kernel_size, "kernel_size", 1)
    SH, SW = pair(stride, "stride", 1)
    PH, PW = pair(padding, "padding", 0)
    DH, DW = pair(dilation, "dilation", 1)
    OH = conv_output_size(H, KH, SH, PH, DH)
    OW = conv_output_size(W, KW, SW, PW, DW)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"input of spatial size {H}x{W} is too small for kernel {KH}x{KW} with dilation {DH}x{DW} "
            f"and padding {PH}x{PW} (output would be {OH}x{OW})"
        )
    return (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW)


# --------------------------------------------------------------------------------------------------
# NumPy twins: what the kernels compute, written plainly.
# --------------------------------------------------------------------------------------------------
def im2col_ref(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unroll ``x`` (N, C, H, W) into columns (N, C*KH*KW, OH*OW), zero outside the image.

    Row ``(c*KH + kh)*KW + kw``, column ``oh*OW + ow`` holds
    ``x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]``.
    """
    xp = get_array_module(x)
    (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = conv_geometry(
        x.shape, kernel_size, stride, padding, dilation)
    xpad = xp.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=x.dtype)
    xpad[:, :, PH:PH + H, PW:PW + W] = x
    col = xp.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            h0, w0 = kh * DH, kw * DW
            col[:, :, kh, kw] = xpad[:, :, h0:h0 + SH * (OH - 1) + 1:SH, w0:w0 + SW * (OW - 1) + 1:SW]
    return col.reshape(N, C * KH * KW, OH * OW)


def col2im_ref(col, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """The adjoint of `im2col_ref`: add every column entry back onto the pixel it was read from."""
    xp = get_array_module(col)
    (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = conv_geometry(
        x_shape, kernel_size, stride, padding, dilation)
    col = col.reshape(N, C, KH, KW, OH, OW)
    xpad = xp.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=col.dtype)
    for kh in range(KH):
        for kw in range(KW):
            h0, w0 = kh * DH, kw * DW
            xpad[:, :, h0:h0 + SH * (OH - 1) + 1:SH, w0:w0 + SW * (OW - 1) + 1:SW] += col[:, :, kh, kw]
    return xpad[:, :, PH:PH + H, PW:PW + W].copy()


# --------------------------------------------------------------------------------------------------
# Fast paths: Cython on the CPU, CuPy kernels on the GPU.
# --------------------------------------------------------------------------------------------------
def _col_shape(N, R, P, rows_first):
    return (R, N, P) if rows_first else (N, R, P)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out=None, rows_first=False):
    """`im2col_ref` computed by the Cython kernel (NumPy input) or the CuPy kernel (CuPy input).

    ``x`` (N, C, H, W) float32/float64 -> ``col`` (N, C*KH*KW, OH*OW). With ``rows_first=True`` the
    result is ``im2col_ref(x).transpose(1, 0, 2)`` laid out contiguously, (C*KH*KW, N, OH*OW): the
    layout in which one GEMM convolves the whole batch (what Conv2d uses). ``out``, if given, is a
    C-contiguous array of that shape, dtype and device, overwritten and returned.
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"im2col: x must be (N, C, H, W), got shape {getattr(x, 'shape', None)}")
    check_float(x, "im2col: x")
    xp = get_array_module(x)
    (N, C, _, _), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = conv_geometry(
        x.shape, kernel_size, stride, padding, dilation)
    shape = _col_shape(N, C * KH * KW, OH * OW, rows_first)
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    elif (tuple(out.shape) != shape or out.dtype != x.dtype or not out.flags.c_contiguous
          or get_array_module(out) is not xp):
        raise ValueError(f"im2col: out must be a C-contiguous {x.dtype} array of shape {shape} on the "
                         f"same device as x, got {out.dtype} {tuple(out.shape)}")
    if out.size == 0:
        return out
    x = xp.ascontiguousarray(x)
    if xp is np:
        k, rf = cpu_kernels(), bool(rows_first)
        # jobs: one per (image, row) of the column matrix, each OH*OW values
        total, grain = N * C * KH * KW, max(1, (1 << 15) // (OH * OW))
        fj = fork_join()
        if fj is not None:
            fj.pool_im2col(x, out, KH, KW, SH, SW, PH, PW, DH, DW, rf, split(total, grain))
        else:
            parallel_for(total, lambda a, b: k.im2col(x, out, KH, KW, SH, SW, PH, PW, DH, DW, rf, a, b),
                         grain=grain)
    else:
        from .cuda_kernels import im2col_gpu

        im2col_gpu(x, out, (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW), rows_first)
    return out


def col2im(col, x_shape, kernel_size, stride=1, padding=0, dilation=1, out=None, rows_first=False):
    """`col2im_ref` computed by the Cython kernel (NumPy) or the CuPy gather kernel (CuPy).

    ``col`` (N, C*KH*KW, OH*OW), or (C*KH*KW, N, OH*OW) with ``rows_first``; returns ``x_shape``
    (N, C, H, W), written into ``out`` if given.
    """
    check_float(col, "col2im: col")
    xp = get_array_module(col)
    (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = conv_geometry(
        x_shape, kernel_size, stride, padding, dilation)
    shape = _col_shape(N, C * KH * KW, OH * OW, rows_first)
    if tuple(col.shape) != shape:
        raise ValueError(f"col2im: col must have shape {shape} for x_shape {tuple(x_shape)}, "
                         f"got {tuple(col.shape)}")
    if out is None:
        out = xp.empty((N, C, H, W), dtype=col.dtype)
    elif (tuple(out.shape) != (N, C, H, W) or out.dtype != col.dtype or not out.flags.c_contiguous
          or get_array_module(out) is not xp):
        raise ValueError(f"col2im: out must be a C-contiguous {col.dtype} array of shape {(N, C, H, W)}")
    if out.size == 0:
        return out
    col = xp.ascontiguousarray(col)
    if xp is np:
        k, rf = cpu_kernels(), bool(rows_first)
        # jobs: one per (image, channel) plane of dx
        grain = max(1, (1 << 15) // (KH * KW * OH * OW))
        fj = fork_join()
        if fj is not None:
            fj.pool_col2im(col, out, KH, KW, SH, SW, PH, PW, DH, DW, rf, split(N * C, grain))
        else:
            parallel_for(N * C, lambda a, b: k.col2im(col, out, KH, KW, SH, SW, PH, PW, DH, DW, rf, a, b),
                         grain=grain)
    else:
        from .cuda_kernels import col2im_gpu

        col2im_gpu(col, out, (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW), rows_first)
    return out

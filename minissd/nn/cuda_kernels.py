"""CuPy kernels for the GPU path of Conv2d, MaxPool2d and ReLU.

Each kernel is a ``cupy.ElementwiseKernel`` with one thread per *output* element, so every output is
written by exactly one thread: col2im and the max-pool backward are gathers (each input pixel sums the
entries that read it, in a fixed order) rather than atomic scatter-adds, which makes them deterministic
(the approach of Chainer's chainer/utils/conv.py). The CPU twins are the Cython kernels in
csrc/im2col.pyx and the NumPy references in minissd/nn/im2col.py and minissd/nn/pool.py; the tests
compare all three on a GPU machine (scripts/gpu_check.sh).

CuPy is imported through minissd.backend only; the kernels compile on first use.
"""
from __future__ import annotations

import numpy as np

from ..backend import cupy_module

_CACHE: dict = {}

_GEOMETRY = ("int32 N, int32 C, int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, int32 PH, "
             "int32 PW, int32 DH, int32 DW, int32 OH, int32 OW, int32 rows_first")

_IM2COL_SRC = r"""
    // i runs over col: (N, C*KH*KW, OH*OW), or (C*KH*KW, N, OH*OW) when rows_first
    const ptrdiff_t P = (ptrdiff_t)OH * OW;
    const ptrdiff_t R = (ptrdiff_t)C * KH * KW;
    const int ow = (int)(i % OW);
    const int oh = (int)((i / OW) % OH);
    const ptrdiff_t j = i / P;
    const int r = (int)(rows_first ? j / N : j % R);
    const ptrdiff_t n = rows_first ? j % N : j / R;
    const int kw = r % KW;
    const int kh = (r / KW) % KH;
    const int c = r / (KH * KW);
    const int ih = oh * SH - PH + kh * DH;
    const int iw = ow * SW - PW + kw * DW;
    if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
        col = x[((n * C + c) * H + ih) * W + iw];
    } else {
        col = (T)0;
    }
"""

_COL2IM_SRC = r"""
    // i runs over dx (N, C, H, W); gather every column entry that read this pixel
    const int iw = (int)(i % W);
    const int ih = (int)((i / W) % H);
    const int c = (int)((i / ((ptrdiff_t)W * H)) % C);
    const ptrdiff_t n = i / ((ptrdiff_t)W * H * C);
    const ptrdiff_t P = (ptrdiff_t)OH * OW;
    const ptrdiff_t R = (ptrdiff_t)C * KH * KW;
    T acc = 0;
    for (int kh = 0; kh < KH; ++kh) {
        const int hnum = ih + PH - kh * DH;
        if (hnum < 0 || hnum % SH != 0) continue;
        const int oh = hnum / SH;
        if (oh >= OH) continue;
        for (int kw = 0; kw < KW; ++kw) {
            const int wnum = iw + PW - kw * DW;
            if (wnum < 0 || wnum % SW != 0) continue;
            const int ow = wnum / SW;
            if (ow >= OW) continue;
            const int r = (c * KH + kh) * KW + kw;
            const ptrdiff_t j = rows_first ? (ptrdiff_t)r * N + n : n * R + r;
            acc += col[j * P + (ptrdiff_t)oh * OW + ow];
        }
    }
    dx = acc;
"""

_POOL_GEOMETRY = "int32 H, int32 W, int32 KH, int32 KW, int32 SH, int32 SW, int32 PH, int32 PW, int32 OH, int32 OW"

_MAXPOOL_FWD_SRC = r"""
    // i runs over y (N, C, OH, OW); x is (N, C, H, W)
    const int ow = (int)(i % OW);
    const int oh = (int)((i / OW) % OH);
    const ptrdiff_t plane = i / ((ptrdiff_t)OW * OH);
    const T* xp = &x[plane * H * W];
    int hs = oh * SH - PH, ws = ow * SW - PW;
    const int he = min(hs + KH, H), we = min(ws + KW, W);
    hs = max(hs, 0);
    ws = max(ws, 0);
    int best_i = hs * W + ws;
    T best = xp[best_i];
    for (int ih = hs; ih < he; ++ih) {
        for (int iw = ws; iw < we; ++iw) {
            const T v = xp[ih * W + iw];
            if (v > best || v != v) { best = v; best_i = ih * W + iw; }
        }
    }
    y = best;
    argmax = best_i;
"""

_MAXPOOL_BWD_SRC = r"""
    // i runs over dx (N, C, H, W): gather dy from every window whose argmax is this pixel
    const int iw = (int)(i % W);
    const int ih = (int)((i / W) % H);
    const ptrdiff_t plane = i / ((ptrdiff_t)W * H);
    const int me = ih * W + iw;
    // windows covering ih: oh*SH - PH <= ih < oh*SH - PH + KH
    int oh0 = ih + PH - KH + 1;
    oh0 = oh0 <= 0 ? 0 : (oh0 + SH - 1) / SH;
    const int oh1 = min((ih + PH) / SH, OH - 1);
    int ow0 = iw + PW - KW + 1;
    ow0 = ow0 <= 0 ? 0 : (ow0 + SW - 1) / SW;
    const int ow1 = min((iw + PW) / SW, OW - 1);
    T acc = 0;
    for (int oh = oh0; oh <= oh1; ++oh) {
        for (int ow = ow0; ow <= ow1; ++ow) {
            const ptrdiff_t o = (plane * OH + oh) * OW + ow;
            if (argmax[o] == me) acc += dy[o];
        }
    }
    dx = acc;
"""


def _kernel(name):
    """Build (once) and return the ElementwiseKernel called ``name``."""
    k = _CACHE.get(name)
    if k is not None:
        return k
    cp = cupy_module()
    if cp is None:
        raise RuntimeError("minissd.nn.cuda_kernels needs CuPy (pip install 'minissd[cuda12]')")
    if name == "im2col":
        k = cp.ElementwiseKernel("raw T x, " + _GEOMETRY, "T col", _IM2COL_SRC, "minissd_im2col")
    elif name == "col2im":
        k = cp.ElementwiseKernel("raw T col, " + _GEOMETRY, "T dx", _COL2IM_SRC, "minissd_col2im")
    elif name == "maxpool_forward":
        k = cp.ElementwiseKernel("raw T x, " + _POOL_GEOMETRY, "T y, int32 argmax", _MAXPOOL_FWD_SRC,
                                 "minissd_maxpool_forward")
    elif name == "maxpool_backward":
        k = cp.ElementwiseKernel("raw T dy, raw int32 argmax, " + _POOL_GEOMETRY, "T dx", _MAXPOOL_BWD_SRC,
                                 "minissd_maxpool_backward")
    elif name == "relu_backward":
        k = cp.ElementwiseKernel("T y, T dy", "T dx", "dx = y > (T)0 ? dy : (T)0", "minissd_relu_backward")
    else:
        raise KeyError(name)
    _CACHE[name] = k
    return k


def _i32(*values):
    return [np.int32(v) for v in values]


def im2col_gpu(x, col, kernel, stride, padding, dilation, out_hw, rows_first=False):
    """Fill ``col`` (N, C*KH*KW, OH*OW), or (C*KH*KW, N, OH*OW) when ``rows_first``, from contiguous
    ``x`` (N, C, H, W); both CuPy arrays."""
    N, C, H, W = x.shape
    _kernel("im2col")(x, *_i32(N, C, H, W, *kernel, *stride, *padding, *dilation, *out_hw,
                               int(bool(rows_first))), col)
    return col


def col2im_gpu(col, dx, kernel, stride, padding, dilation, out_hw, rows_first=False):
    """Overwrite ``dx`` (N, C, H, W) with the adjoint of im2col applied to contiguous ``col``."""
    N, C, H, W = dx.shape
    _kernel("col2im")(col, *_i32(N, C, H, W, *kernel, *stride, *padding, *dilation, *out_hw,
                                 int(bool(rows_first))), dx)
    return dx


def maxpool_forward_gpu(x, y, argmax, kernel, stride, padding):
    """Fill ``y`` and ``argmax`` (N, C, OH, OW) from contiguous ``x`` (N, C, H, W)."""
    H, W = x.shape[2:]
    OH, OW = y.shape[2:]
    _kernel("maxpool_forward")(x, *_i32(H, W, *kernel, *stride, *padding, OH, OW), y, argmax)
    return y, argmax


def maxpool_backward_gpu(dy, argmax, dx, kernel, stride, padding):
    """Overwrite ``dx`` (N, C, H, W) with dy gathered onto each window's argmax."""
    H, W = dx.shape[2:]
    OH, OW = dy.shape[2:]
    _kernel("maxpool_backward")(dy, argmax, *_i32(H, W, *kernel, *stride, *padding, OH, OW), dx)
    return dx


def relu_backward_gpu(y, dy):
    """dL/dx = dy where y > 0, else 0 (a new array)."""
    return _kernel("relu_backward")(y, dy.astype(y.dtype, copy=False))

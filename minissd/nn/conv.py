"""2-D convolution by im2col + GEMM, with col2im as its exact adjoint.

A convolution with F filters of shape (C, KH, KW) is one matrix product once the input is unrolled:
``im2col`` copies, for every output pixel, the C*KH*KW input values under the filter into one column, so

    col = im2col(x)                       # (N, C*KH*KW, OH*OW)
    y   = W.reshape(F, -1) @ col + b      # (N, F, OH*OW), already NCHW

and the backward pass is three products and the adjoint of the unrolling:

    dW   = sum_n dy[n] @ col[n].T         # (F, C*KH*KW)
    db   = sum over n and pixels of dy    # (F,)
    dcol = W.reshape(F, -1).T @ dy        # (N, C*KH*KW, OH*OW)
    dx   = col2im(dcol)                   # (N, C, H, W): each dcol entry added back where it was read

``col2im`` is the transpose (adjoint) of ``im2col`` as linear maps: ``<im2col(x), r> == <x, col2im(r)>``
for every x, r, which tests/test_conv.py proves to 1e-12.

Three implementations share one layout: the plain NumPy twins `im2col_ref` / `col2im_ref` (loops over
the KH*KW kernel taps, easy to read), the Cython kernels in csrc/im2col.pyx (the CPU path) and the CuPy
kernels in minissd/nn/cuda_kernels.py (the GPU path). `im2col` / `col2im` pick by the array's device.

SSD uses stride 2 (extra layers), padding, and dilation 6 (fc6, the "atrous" conv of section 3 of the
paper, which keeps fc6's receptive field after pool5 became 3x3/s1).

Paper: section 3 ("Base network": fc6/fc7 converted to convolutions, atrous algorithm).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .init import init_weight
from .layers import check_input, parallel_for, parallel_sum
from .module import Module

# Column buffers above this many bytes are not kept from forward to backward: backward unrolls the
# input again, one chunk of images at a time. Below it, keeping the buffer saves an im2col per step.
CACHE_BYTES = 512 * 2**20
# Largest column buffer made at once when the whole batch does not fit in CACHE_BYTES (SSD300 at
# batch 32: conv1_2's full buffer would be 32 * 576 * 300 * 300 * 4 B = 6.6 GB).
CHUNK_BYTES = 128 * 2**20


_SCRATCH: dict = {}


def _scratch(xp, slot: str, shape, dtype):
    """A shared buffer for values that need not outlive one call (every layer reuses it); one per
    ``slot`` name, dtype and device, grown as needed."""
    size = int(np.prod(shape))
    key = (xp.__name__, slot, np.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < size:
        _SCRATCH.pop(key, None)
        buf = xp.empty(size, dtype=dtype)
        _SCRATCH[key] = buf
    return buf[:size].reshape(shape)


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        pair = (value[0], value[1])
    else:
        pair = (value, value)
    out = []
    for v in pair:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        if int(v) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1 (may be <= 0: no output)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _geometry(x_shape, kernel_size, stride, padding, dilation):
    N, C, H, W = (int(s) for s in x_shape)
    KH, KW = _pair(kernel_size, "kernel_size", 1)
    SH, SW = _pair(stride, "stride", 1)
    PH, PW = _pair(padding, "padding", 0)
    DH, DW = _pair(dilation, "dilation", 1)
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
    (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = _geometry(
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
    (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = _geometry(
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
_KERNELS = None


def _cpu_kernels():
    global _KERNELS
    if _KERNELS is None:
        from .._ext import load_extension

        _KERNELS = load_extension("_im2col")
    return _KERNELS


def _check_float(x, name):
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")


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
    _check_float(x, "im2col: x")
    xp = get_array_module(x)
    (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = _geometry(
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
        k, rf = _cpu_kernels(), bool(rows_first)
        # jobs: one per (image, row) of the column matrix, each OH*OW values
        parallel_for(N * C * KH * KW, lambda a, b: k.im2col(x, out, KH, KW, SH, SW, PH, PW, DH, DW, rf, a, b),
                     grain=max(1, (1 << 15) // (OH * OW)))
    else:
        from .cuda_kernels import im2col_gpu

        im2col_gpu(x, out, (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW), rows_first)
    return out


def col2im(col, x_shape, kernel_size, stride=1, padding=0, dilation=1, out=None, rows_first=False):
    """`col2im_ref` computed by the Cython kernel (NumPy) or the CuPy gather kernel (CuPy).

    ``col`` (N, C*KH*KW, OH*OW), or (C*KH*KW, N, OH*OW) with ``rows_first``; returns ``x_shape``
    (N, C, H, W), written into ``out`` if given.
    """
    _check_float(col, "col2im: col")
    xp = get_array_module(col)
    (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW) = _geometry(
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
        k, rf = _cpu_kernels(), bool(rows_first)
        # jobs: one per (image, channel) plane of dx
        parallel_for(N * C, lambda a, b: k.col2im(col, out, KH, KW, SH, SW, PH, PW, DH, DW, rf, a, b),
                     grain=max(1, (1 << 15) // (KH * KW * OH * OW)))
    else:
        from .cuda_kernels import col2im_gpu

        col2im_gpu(col, out, (KH, KW), (SH, SW), (PH, PW), (DH, DW), (OH, OW), rows_first)
    return out


# --------------------------------------------------------------------------------------------------
# GEMMs and copies split across the CPU threads (minissd.nn.layers.parallel_for); one call on the GPU.
# --------------------------------------------------------------------------------------------------
_GEMM_GRAIN = 1 << 21       # multiply-adds per thread below which splitting costs more than it saves


def _gemm(A, B, out):
    """out = A @ B for 2-D arrays; on the CPU the columns of B are split across threads."""
    if get_array_module(B) is not np:
        return get_array_module(B).matmul(A, B, out=out)
    grain = max(1, _GEMM_GRAIN // max(1, A.shape[0] * A.shape[1]))
    parallel_for(B.shape[1], lambda a, b: np.matmul(A, B[:, a:b], out=out[:, a:b]), grain=grain)
    return out


def _gemm_nt(A, B):
    """A @ B.T for A (F, K), B (R, K) with K long; on the CPU K is split and the parts summed in order."""
    if get_array_module(B) is not np:
        return A @ B.T
    grain = max(1, _GEMM_GRAIN // max(1, A.shape[0] * B.shape[0]))
    return parallel_sum(A.shape[1], lambda a, b: A[:, a:b] @ B[:, a:b].T, grain=grain)


def _copy_images(dst, src_fn, count, per_image):
    """dst[a:b] = src_fn(a, b) for image ranges, split across threads on the CPU."""
    if get_array_module(dst) is not np:
        dst[...] = src_fn(0, count)
        return

    def job(a, b):
        dst[a:b] = src_fn(a, b)

    parallel_for(count, job, grain=max(1, (1 << 16) // max(1, per_image)))


# --------------------------------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------------------------------
class Conv2d(Module):
    """y = W * x + b (cross-correlation, as in Caffe and PyTorch) by im2col + GEMM.

    Parameters
    ----------
    in_channels, out_channels : C and F.
    kernel_size, stride, padding, dilation : int or (h, w) pair.
    bias : learn a per-filter bias ``b`` (F,).
    init : "xavier" (the SSD authors' Caffe filler, U(+-sqrt(3/fan_in))) or "he" (N(0, 2/fan_in));
        biases start at 0. See minissd/nn/init.py.
    rng : numpy Generator for the initial weights (pass one for reproducible runs).
    dtype : float32 for training, float64 for gradient checks (or ``module.astype``).
    input_grad : when False, `backward` skips dL/dx and returns None (the first layer of a network,
        whose input is the image, saves a GEMM and a col2im).

    Shapes: x (N, C, H, W) -> y (N, F, OH, OW), OH = floor((H + 2*PH - DH*(KH-1) - 1) / SH) + 1.
    Params: ``W`` (F, C, KH, KW), ``b`` (F,).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, init: str = "xavier", rng: np.random.Generator | None = None,
                 dtype=np.float32, input_grad: bool = True):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {v!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size", 1)
        self.stride = _pair(stride, "Conv2d stride", 1)
        self.padding = _pair(padding, "Conv2d padding", 0)
        self.dilation = _pair(dilation, "Conv2d dilation", 1)
        self.input_grad = bool(input_grad)
        self.init = init
        rng = rng if rng is not None else np.random.default_rng()
        KH, KW = self.kernel_size
        shape = (self.out_channels, self.in_channels, KH, KW)
        self.add_param("W", init_weight(init, shape, rng, dtype))
        if bias:
            self.add_param("b", np.zeros(self.out_channels, dtype=dtype))
        self._x = None          # input of the last forward (backward unrolls it again if needed)
        self._col = None        # this layer's column buffer, rows first: (C*KH*KW, N, OH*OW)
        self._col_valid = False
        self._out_hw = None

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if "b" not in self.params:
            s += ", bias=False"
        return s

    def clear_cache(self) -> None:
        self._x = None
        self._col = None
        self._col_valid = False

    # -- helpers -------------------------------------------------------------------------------
    def _conv_args(self):
        return self.kernel_size, self.stride, self.padding, self.dilation

    def _chunk(self, N, rows, pixels, itemsize):
        """Images per im2col chunk so that one chunk's columns stay under CHUNK_BYTES."""
        per_image = rows * pixels * itemsize
        return max(1, min(N, CHUNK_BYTES // max(per_image, 1)))

    def _workspace(self, xp, shape, dtype):
        """This layer's column buffer of ``shape``, reused across steps (big fresh arrays cost page
        faults); it holds the columns from forward to backward."""
        buf = self._col
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype or get_array_module(buf) is not xp:
            self._col = None
            buf = xp.empty(shape, dtype=dtype)
            self._col = buf
        return buf

    # -- the two passes ----------------------------------------------------------------------------
    # The batch is convolved by one GEMM per chunk of images, not one per image: the columns are laid
    # out rows first, (R, n, P) with R = C*KH*KW and P = OH*OW, so that
    #     Y (F, n*P) = W2d (F, R) @ col (R, n*P)
    # and one transposed copy (fused with the bias add) turns Y into NCHW. A few large GEMMs keep
    # OpenBLAS's threads busy where one small GEMM per image spends its time starting and joining them.
    def forward(self, x):
        W = self.params["W"]
        check_input("Conv2d", x, channels=self.in_channels, like=W)
        xp = get_array_module(x)
        x = xp.ascontiguousarray(x)
        (N, C, H, Wd), _, _, _, _, (OH, OW) = _geometry(x.shape, *self._conv_args())
        F = self.out_channels
        W2d = W.reshape(F, -1)                                   # (F, R)
        R, P = W2d.shape[1], OH * OW
        y = xp.empty((N, F, P), dtype=x.dtype)
        b = self.params["b"].reshape(1, F, 1) if "b" in self.params else None
        self._x = x
        self._out_hw = (OH, OW)
        self._col_valid = False
        keep = self.training and N * R * P * x.itemsize <= CACHE_BYTES
        step = max(1, N) if keep else self._chunk(N, R, P, x.itemsize)
        for n0 in range(0, N, step):
            m = min(N, n0 + step) - n0
            if keep:
                col = self._workspace(xp, (R, N, P), x.dtype)
            else:
                col = _scratch(xp, "col", (R, m, P), x.dtype)
            im2col(x[n0:n0 + m], *self._conv_args(), out=col, rows_first=True)
            yt = _scratch(xp, "y", (F, m * P), x.dtype)
            _gemm(W2d, col.reshape(R, m * P), yt)                 # (F, m*P)
            yt = yt.reshape(F, m, P)
            if b is not None:                                     # (F, a:b, P) -> (a:b, F, P), + bias
                _copy_images(y[n0:n0 + m], lambda a, c: yt[:, a:c].transpose(1, 0, 2) + b, m, F * P)
            else:
                _copy_images(y[n0:n0 + m], lambda a, c: yt[:, a:c].transpose(1, 0, 2), m, F * P)
        self._col_valid = keep
        return y.reshape(N, F, OH, OW)

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("Conv2d.backward called before forward")
        x = self._x
        xp = get_array_module(x)
        N, C, H, Wd = x.shape
        OH, OW = self._out_hw
        F = self.out_channels
        if tuple(dy.shape) != (N, F, OH, OW):
            raise ValueError(f"Conv2d.backward: dy must have shape {(N, F, OH, OW)}, got {tuple(dy.shape)}")
        W2d = self.params["W"].reshape(F, -1)
        R, P = W2d.shape[1], OH * OW
        dy = dy.reshape(N, F, P)
        dW = self.grads["W"].reshape(F, R)                       # a view: += lands in grads["W"]
        dx = xp.empty_like(x) if self.input_grad else None
        keep = self._col_valid
        step = max(1, N) if keep else self._chunk(N, R, P, x.itemsize)
        db = None
        for n0 in range(0, N, step):
            m = min(N, n0 + step) - n0
            if keep:
                col = self._col
            else:
                col = _scratch(xp, "col", (R, m, P), x.dtype)
                im2col(x[n0:n0 + m], *self._conv_args(), out=col, rows_first=True)
            col2d = col.reshape(R, m * P)
            dyt = _scratch(xp, "y", (F, m, P), x.dtype)
            dyt_images = dyt.transpose(1, 0, 2)                  # (m, F, P) view of (F, m, P)
            _copy_images(dyt_images, lambda a, c: dy[n0 + a:n0 + c], m, F * P)
            dyt = dyt.reshape(F, m * P)
            part = dyt.sum(axis=1)
            db = part if db is None else db + part
            dW += _gemm_nt(dyt, col2d)                           # (F, m*P) @ (m*P, R)
            if dx is not None:
                # the columns are spent: their buffer takes dcol = W2d.T @ dy
                _gemm(W2d.T, dyt, col2d)                         # (R, m*P)
                col2im(col, (m, C, H, Wd), *self._conv_args(), out=dx[n0:n0 + m], rows_first=True)
        if "b" in self.params and db is not None:
            self.grads["b"] += db
        self._col_valid = False
        self._x = None
        return dx

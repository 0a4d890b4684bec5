"""Max-pooling: the reference window loop first, then the layer (Cython on the CPU, CuPy on the GPU).

Output pixel (oh, ow) is the maximum of the input window of KHxKW pixels starting at
(oh*SH - PH, ow*SW - PW), clipped to the image (padding never wins: it counts as -inf). Backward sends
each output's gradient to the one input pixel that won its window (its argmax); a pixel that wins
several overlapping windows receives the sum.

SSD300 uses 2x2/s2 pools, pool3 with ceil_mode (75x75 -> 38x38), and pool5 3x3/s1/p1 (paper section 3,
"Base network": "we change pool5 from 2 x 2 - s2 to 3 x 3 - s1").
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .checks import check_input, pair
from .module import Module
from .threads import cpu_kernels, parallel_for


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of a max-pool, PyTorch's rule (which Caffe's pooling layer also follows).

    floor (or ceil) of (size + 2*padding - kernel) / stride, plus one; with ceil_mode the last window
    must still start inside the input or its left padding, else it is dropped.
    """
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


# --------------------------------------------------------------------------------------------------
# The reference: plain NumPy, one window at a time.
# --------------------------------------------------------------------------------------------------
def maxpool_forward_ref(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max over each window: ``x`` (N, C, H, W) -> ``(y, argmax)``, both (N, C, OH, OW).

    ``argmax`` (int32) is the flat index ``ih * W + iw`` of the winning pixel in its (H, W) plane; ties
    go to the first pixel of the window in row-major order. ``kernel_size``, ``stride`` (None: the
    kernel) and ``padding`` are ints or (h, w) pairs.
    """
    x = np.asarray(x)
    N, C, H, W = x.shape
    KH, KW = pair(kernel_size, "kernel_size", 1)
    SH, SW = (KH, KW) if stride is None else pair(stride, "stride", 1)
    PH, PW = pair(padding, "padding", 0)
    OH = pool_output_size(H, KH, SH, PH, ceil_mode)
    OW = pool_output_size(W, KW, SW, PW, ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int32)
    for oh in range(OH):
        h0, h1 = max(oh * SH - PH, 0), min(oh * SH - PH + KH, H)       # the window, clipped to the image
        for ow in range(OW):
            w0, w1 = max(ow * SW - PW, 0), min(ow * SW - PW + KW, W)
            window = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)            # (N, C, window pixels)
            k = window.argmax(axis=2)                                     # first maximum
            y[:, :, oh, ow] = np.take_along_axis(window, k[:, :, None], axis=2)[:, :, 0]
            ih, iw = h0 + k // (w1 - w0), w0 + k % (w1 - w0)
            argmax[:, :, oh, ow] = ih * W + iw
    return y, argmax


def maxpool_backward_ref(dy, argmax, x_shape):
    """dL/dx (``x_shape``): each dy[n, c, oh, ow] added onto pixel argmax[n, c, oh, ow] of plane (n, c)."""
    dy, argmax = np.asarray(dy), np.asarray(argmax)
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H * W), dtype=dy.dtype)
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")       # (N, C) plane indices
    for oh in range(dy.shape[2]):
        for ow in range(dy.shape[3]):
            # one window per plane here, so no index repeats within this += (overlaps add across loops)
            dx[n, c, argmax[:, :, oh, ow]] += dy[:, :, oh, ow]
    return dx.reshape(N, C, H, W)


# --------------------------------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------------------------------
class MaxPool2d(Module):
    """Max over KHxKW windows; backward routes each gradient to its window's argmax.

    Parameters
    ----------
    kernel_size : int or pair.
    stride : int or pair; None means kernel_size.
    padding : int or pair, at most half the kernel (padding counts as -inf).
    ceil_mode : round the output size up (SSD300's pool3 turns 75x75 into 38x38).

    Keeps the argmax of the last forward (int32, the size of the output) for backward.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size = pair(kernel_size, "MaxPool2d kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "MaxPool2d stride", 1)
        self.padding = pair(padding, "MaxPool2d padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(f"MaxPool2d: padding {self.padding} must be at most half of kernel_size "
                             f"{self.kernel_size}")
        self.ceil_mode = bool(ceil_mode)
        self._argmax = None
        self._x_shape = None

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        return s + (", ceil_mode=True" if self.ceil_mode else "")

    def clear_own_cache(self) -> None:
        self._argmax = None
        self._x_shape = None

    def output_shape(self, x_shape):
        N, C, H, W = x_shape
        OH = pool_output_size(H, self.kernel_size[0], self.stride[0], self.padding[0], self.ceil_mode)
        OW = pool_output_size(W, self.kernel_size[1], self.stride[1], self.padding[1], self.ceil_mode)
        return N, C, OH, OW

    def forward(self, x):
        check_input("MaxPool2d", x)
        xp = get_array_module(x)
        N, C, OH, OW = self.output_shape(x.shape)
        if OH < 1 or OW < 1:
            raise ValueError(f"MaxPool2d: input of shape {tuple(x.shape)} is smaller than the kernel "
                             f"{self.kernel_size} (output would be {OH}x{OW})")
        x = xp.ascontiguousarray(x)
        y = xp.empty((N, C, OH, OW), dtype=x.dtype)
        argmax = xp.empty((N, C, OH, OW), dtype=np.int32)
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        if xp is np:
            k = cpu_kernels()
            parallel_for(N * C, lambda a, b: k.maxpool_forward(x, y, argmax, KH, KW, SH, SW, PH, PW, a, b),
                         grain=max(1, (1 << 15) // max(1, x.shape[2] * x.shape[3])))
        else:
            from .cuda_kernels import maxpool_forward_gpu

            maxpool_forward_gpu(x, y, argmax, self.kernel_size, self.stride, self.padding)
        self._argmax = argmax
        self._x_shape = tuple(x.shape)
        return y

    def backward(self, dy):
        argmax = self._argmax
        if argmax is None:
            raise RuntimeError("MaxPool2d.backward called before forward")
        if tuple(dy.shape) != tuple(argmax.shape):
            raise ValueError(f"MaxPool2d.backward: dy must have shape {tuple(argmax.shape)}, "
                             f"got {tuple(dy.shape)}")
        xp = get_array_module(argmax)
        self._argmax = None
        dtype = dy.dtype if dy.dtype in (np.float32, np.float64) else np.float32
        dy = xp.ascontiguousarray(dy, dtype=dtype)
        dx = xp.empty(self._x_shape, dtype=dtype)
        if xp is np:
            k = cpu_kernels()
            N, C, H, W = self._x_shape
            parallel_for(N * C, lambda a, b: k.maxpool_backward(dy, argmax, dx, a, b),
                         grain=max(1, (1 << 15) // max(1, H * W)))
        else:
            from .cuda_kernels import maxpool_backward_gpu

            maxpool_backward_gpu(dy, argmax, dx, self.kernel_size, self.stride, self.padding)
        return dx

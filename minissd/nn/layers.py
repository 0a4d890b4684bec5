"""ReLU, MaxPool2d and L2Norm: the layers of SSD's VGG16 trunk besides the convolution.

Each has a hand-written backward (proved by float64 central differences and cross-checked against
PyTorch in tests/test_layers.py). On the CPU the element-wise and pooling loops run in the Cython
kernels of csrc/im2col.pyx (module ``minissd._im2col``); the NumPy twins ``*_ref`` here state what
those kernels compute. On the GPU they run as CuPy kernels (minissd/nn/cuda_kernels.py).

Paper: section 3 "Base network" (VGG16 with pool5 changed to 3x3/s1, L2 normalisation of conv4_3,
citing ParseNet, Liu, Rabinovich and Berg 2015).
"""
from __future__ import annotations

import os

import numpy as np

from ..backend import device_of, get_array_module
from .module import Module

_KERNELS = None


def _cpu_kernels():
    global _KERNELS
    if _KERNELS is None:
        from .._ext import load_extension

        _KERNELS = load_extension("_im2col")
    return _KERNELS


# --------------------------------------------------------------------------------------------------
# CPU threads. The layers split their work (GEMM columns, im2col rows, pooled planes) into one
# contiguous range per thread and run the ranges on a small pool of Python threads; the GEMMs and the
# Cython kernels release the GIL, and OpenBLAS is asked for one thread per call. Why not OpenBLAS's own
# threads: its workers busy-wait at the end of every call, and on a machine whose cores are shared with
# other processes a descheduled worker stalls the whole call (measured on the 2-core development
# machine under load: a 16->32 channel 3x3 conv at batch 16, forward + backward, took 0.4-4 s with
# OpenBLAS's 2 threads and 0.12 s single-threaded). Pool threads wait on a lock instead, so a busy
# machine costs at most the share of the CPU it takes away.
# --------------------------------------------------------------------------------------------------
_THREADS = {"n": None, "pool": None, "blas_pinned": None}


def _default_threads() -> int:
    env = os.environ.get("MINISSD_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"MINISSD_NUM_THREADS={env!r} is not an integer") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _pin_blas_to_one_thread() -> bool:
    """Ask numpy's OpenBLAS for single-threaded calls; False when that BLAS cannot be found."""
    import ctypes
    import glob

    here = os.path.dirname(np.__file__)
    candidates = []
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", "../numpy/.libs/*openblas*"):
        candidates += sorted(glob.glob(os.path.join(here, pattern)))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                fn(1)
                return True
    return False


def set_num_threads(n: int = 0) -> None:
    """Threads for minissd's CPU layers (0: $MINISSD_NUM_THREADS, else the cores this process may use).

    numpy's OpenBLAS is set to one thread per call (the layers split each GEMM themselves); if that
    BLAS cannot be reached (numpy built against another BLAS), the layers stay single-threaded and
    leave that BLAS's own threading alone.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"set_num_threads: n must be an int >= 0, got {n!r}")
    n = int(n) or _default_threads()
    if _THREADS["blas_pinned"] is None:
        _THREADS["blas_pinned"] = _pin_blas_to_one_thread()
    if n > 1 and not _THREADS["blas_pinned"]:
        n = 1
    old, _THREADS["pool"] = _THREADS["pool"], None
    if old is not None:
        old.shutdown(wait=True)
    _THREADS["n"] = n


def get_num_threads() -> int:
    """Threads the CPU layers use."""
    if _THREADS["n"] is None:
        set_num_threads(0)
    return _THREADS["n"]


def _split(total: int, grain: int) -> list:
    n = min(get_num_threads(), max(1, total // max(1, grain)))
    return [total * i // n for i in range(n + 1)]


def _run(fn, bounds):
    """fn over consecutive ranges of ``bounds``: the first in this thread, the rest on the pool."""
    n = len(bounds) - 1
    if n <= 1:
        return [fn(bounds[0], bounds[-1])]
    pool = _THREADS["pool"]
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor

        pool = _THREADS["pool"] = ThreadPoolExecutor(max_workers=get_num_threads() - 1,
                                                     thread_name_prefix="minissd")
    futures = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, n)]
    results = [fn(bounds[0], bounds[1])]
    results += [f.result() for f in futures]           # re-raises a worker's exception
    return results


def parallel_for(total: int, fn, grain: int = 1) -> None:
    """Run ``fn(start, stop)`` over ``range(total)`` split into one contiguous range per thread.

    Ranges are at least ``grain`` long, so small work stays in the calling thread. ``fn`` must write
    disjoint outputs for disjoint ranges.
    """
    if total > 0:
        _run(fn, _split(total, grain))


def parallel_sum(total: int, fn, grain: int = 1):
    """``fn(start, stop)`` summed over the split of `parallel_for`, added in range order."""
    parts = _run(fn, _split(max(total, 1), grain))
    acc = parts[0]
    for p in parts[1:]:
        acc = acc + p
    return acc


def check_input(layer: str, x, channels: int | None = None, like=None, ndim: int | None = 4) -> None:
    """Raise ValueError naming ``layer`` and the shapes when ``x`` is not a valid input.

    ``x`` must be an array with ``ndim`` dims (NCHW; None skips the check), ``channels`` channels on axis
    1 (None skips), a float32/float64 dtype, and, when ``like`` (a parameter) is given, the same dtype
    and device as ``like``.
    """
    shape = getattr(x, "shape", None)
    if shape is None or not hasattr(x, "dtype"):
        raise ValueError(f"{layer}: input must be an array, got {type(x).__name__}")
    shape = tuple(shape)
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{layer}: input must be {ndim}-D (N, C, H, W), got shape {shape}")
    if channels is not None and shape[1] != channels:
        raise ValueError(f"{layer}: expected {channels} input channels (N, {channels}, H, W), "
                         f"got input of shape {shape}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{layer}: input dtype must be float32 or float64, got {x.dtype} (shape {shape})")
    if like is not None:
        if x.dtype != like.dtype:
            raise ValueError(f"{layer}: input dtype {x.dtype} (shape {shape}) does not match the parameter "
                             f"dtype {like.dtype}; cast the input or call layer.astype({x.dtype})")
        if get_array_module(x) is not get_array_module(like):
            raise ValueError(f"{layer}: input (shape {shape}) is on {device_of(x)} but the parameters are "
                             f"on {device_of(like)}; call layer.to({device_of(x)!r})")


def _flat(a):
    return a.reshape(-1)


# --------------------------------------------------------------------------------------------------
class ReLU(Module):
    """y = max(x, 0); dL/dx = dL/dy where y > 0, else 0 (any shape, float32/float64).

    ``inplace=True`` writes y over x (saves one activation-sized allocation; use it only where nothing
    else keeps x, e.g. right after a Conv2d, which keeps its input and columns but not its output).
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)
        self._y = None

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

    def clear_cache(self) -> None:
        self._y = None

    def forward(self, x):
        check_input("ReLU", x, ndim=None)
        xp = get_array_module(x)
        if xp is np:
            x = np.ascontiguousarray(x)
            y = x if self.inplace else np.empty_like(x)
            xf, yf, k = _flat(x), _flat(y), _cpu_kernels()
            parallel_for(xf.size, lambda a, b: k.relu_forward(xf[a:b], yf[a:b]), grain=1 << 16)
        else:
            y = xp.maximum(x, 0, out=x if self.inplace else None)
        self._y = y
        return y

    def backward(self, dy):
        y = self._y
        if y is None:
            raise RuntimeError("ReLU.backward called before forward")
        if tuple(dy.shape) != tuple(y.shape):
            raise ValueError(f"ReLU.backward: dy must have shape {tuple(y.shape)}, got {tuple(dy.shape)}")
        xp = get_array_module(y)
        self._y = None
        if xp is np:
            dy = np.ascontiguousarray(dy, dtype=y.dtype)
            dx = np.empty_like(y)
            yf, dyf, dxf, k = _flat(y), _flat(dy), _flat(dx), _cpu_kernels()
            parallel_for(yf.size, lambda a, b: k.relu_backward(yf[a:b], dyf[a:b], dxf[a:b]), grain=1 << 16)
            return dx
        from .cuda_kernels import relu_backward_gpu

        return relu_backward_gpu(y, dy)


# --------------------------------------------------------------------------------------------------
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


def maxpool_forward_ref(x, kernel_size, stride, padding=0, ceil_mode=False):
    """NumPy twin of the max-pool kernel: ``(y, argmax)`` with argmax the flat index ih*W + iw.

    ``x`` (N, C, H, W) -> y (N, C, OH, OW), argmax (N, C, OH, OW) int32. Padding counts as -inf; ties go
    to the first pixel of the window in row-major order.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW) = kernel_size, stride, padding
    OH = pool_output_size(H, KH, SH, PH, ceil_mode)
    OW = pool_output_size(W, KW, SW, PW, ceil_mode)
    # pad with -inf far enough that every (ceil_mode) window is inside the padded array
    HP = max(H + 2 * PH, (OH - 1) * SH + KH)
    WP = max(W + 2 * PW, (OW - 1) * SW + KW)
    xpad = xp.full((N, C, HP, WP), -np.inf, dtype=x.dtype)
    xpad[:, :, PH:PH + H, PW:PW + W] = x
    taps = xp.stack([xpad[:, :, kh:kh + SH * (OH - 1) + 1:SH, kw:kw + SW * (OW - 1) + 1:SW]
                     for kh in range(KH) for kw in range(KW)])      # (KH*KW, N, C, OH, OW)
    tap = xp.argmax(taps, axis=0)                                  # first maximum
    y = xp.take_along_axis(taps, tap[None], axis=0)[0]
    kh, kw = tap // KW, tap % KW
    ih = xp.arange(OH).reshape(OH, 1) * SH - PH + kh
    iw = xp.arange(OW).reshape(1, OW) * SW - PW + kw
    return y, (ih * W + iw).astype(np.int32)


def maxpool_backward_ref(dy, argmax, x_shape):
    """NumPy twin of the max-pool backward: dy added onto the argmax pixel of each window."""
    xp = get_array_module(dy)
    N, C, H, W = x_shape
    dx = xp.zeros((N * C, H * W), dtype=dy.dtype)
    planes = xp.repeat(xp.arange(N * C), argmax.shape[2] * argmax.shape[3])   # plane of each output
    index = (planes, argmax.reshape(-1))
    if xp is np:
        np.add.at(dx, index, dy.reshape(-1))          # unbuffered: overlapping windows add up
    else:
        xp.add.at(dx, index, dy.reshape(-1))
    return dx.reshape(N, C, H, W)


class MaxPool2d(Module):
    """Max over KHxKW windows; backward routes each gradient to its window's argmax.

    Parameters
    ----------
    kernel_size : int or pair.
    stride : int or pair; None means kernel_size.
    padding : int or pair, at most half the kernel (padding counts as -inf).
    ceil_mode : round the output size up (SSD300's pool3 turns 75x75 into 38x38).

    SSD300 uses 2x2/s2 pools, pool3 with ceil_mode, and pool5 3x3/s1/p1 (section 3: "we change pool5
    from 2x2 - s2 to 3x3 - s1").
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        super().__init__()
        from .conv import _pair

        self.kernel_size = _pair(kernel_size, "MaxPool2d kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "MaxPool2d stride", 1)
        self.padding = _pair(padding, "MaxPool2d padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"MaxPool2d: padding {self.padding} must be at most half of kernel_size "
                             f"{self.kernel_size}")
        self.ceil_mode = bool(ceil_mode)
        self._argmax = None
        self._x_shape = None

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        return s + (", ceil_mode=True" if self.ceil_mode else "")

    def clear_cache(self) -> None:
        self._argmax = None

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
            k = _cpu_kernels()
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
            k = _cpu_kernels()
            N, C, H, W = self._x_shape
            parallel_for(N * C, lambda a, b: k.maxpool_backward(dy, argmax, dx, a, b),
                         grain=max(1, (1 << 15) // max(1, H * W)))
        else:
            from .cuda_kernels import maxpool_backward_gpu

            maxpool_backward_gpu(dy, argmax, dx, self.kernel_size, self.stride, self.padding)
        return dx


# --------------------------------------------------------------------------------------------------
class L2Norm(Module):
    """Per-pixel L2 normalisation across channels with a learned per-channel scale (ParseNet).

    y[n, c, h, w] = weight[c] * x[n, c, h, w] / ||x[n, :, h, w]||,  ||v|| = sqrt(sum_c v_c^2 + eps)

    SSD applies it to conv4_3, whose activations are on a different scale from the deeper maps, with
    the scale initialised to 20 and learned (paper section 3.1, "PASCAL VOC2007"). ``eps`` sits inside
    the square root as in the authors' Caffe Normalize layer (ssd.pytorch adds it outside instead).

    Backward, with xhat = x / ||x|| and g = dy * weight:
    dx = (g - xhat * sum_c(g * xhat)) / ||x||,  dweight[c] = sum over n, h, w of dy * xhat.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10, dtype=np.float32):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"L2Norm: channels must be a positive int, got {channels!r}")
        self.channels = int(channels)
        self.eps = float(eps)
        self.add_param("weight", np.full(self.channels, scale, dtype=dtype))
        self._xhat = None
        self._norm = None

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"

    def clear_cache(self) -> None:
        self._xhat = None
        self._norm = None

    def forward(self, x):
        w = self.params["weight"]
        check_input("L2Norm", x, channels=self.channels, like=w)
        xp = get_array_module(x)
        norm = xp.sqrt((x * x).sum(axis=1, keepdims=True) + self.eps)   # (N, 1, H, W)
        xhat = x / norm
        self._xhat, self._norm = xhat, norm
        return xhat * w.reshape(1, -1, 1, 1)

    def backward(self, dy):
        xhat, norm = self._xhat, self._norm
        if xhat is None:
            raise RuntimeError("L2Norm.backward called before forward")
        if tuple(dy.shape) != tuple(xhat.shape):
            raise ValueError(f"L2Norm.backward: dy must have shape {tuple(xhat.shape)}, got {tuple(dy.shape)}")
        w = self.params["weight"]
        self.grads["weight"] += (dy * xhat).sum(axis=(0, 2, 3))
        g = dy * w.reshape(1, -1, 1, 1)
        dx = g - xhat * (g * xhat).sum(axis=1, keepdims=True)
        dx /= norm
        self._xhat = self._norm = None
        return dx

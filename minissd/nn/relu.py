"""ReLU: the reference pair first, then the layer (Cython kernels on the CPU, CuPy on the GPU).

    y = max(x, 0)           dL/dx = dL/dy where x > 0, else 0

(the subgradient at 0 is 0; a NaN input passes through forward, as in torch.relu, and gets gradient 0).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .checks import check_input
from .module import Module
from .threads import cpu_kernels, parallel_for


# --------------------------------------------------------------------------------------------------
# The reference: plain NumPy.
# --------------------------------------------------------------------------------------------------
def relu_forward_ref(x):
    """y = max(x, 0), element by element (any shape; NaN stays NaN)."""
    return np.maximum(np.asarray(x), 0)


def relu_backward_ref(x, dy):
    """dL/dx given the forward input ``x`` and dL/dy: dy where x > 0, else 0."""
    x, dy = np.asarray(x), np.asarray(dy)
    return np.where(x > 0, dy, 0).astype(dy.dtype)


# --------------------------------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------------------------------
def _flat(a):
    return a.reshape(-1)


class ReLU(Module):
    """y = max(x, 0); dL/dx = dL/dy where y > 0, else 0 (any shape, float32/float64).

    Keeps its output ``y`` from forward to backward (y > 0 exactly where x > 0).
    ``inplace=True`` writes y over x in forward and dL/dx over dL/dy in backward (saves two
    activation-sized allocations per step, whose fresh pages cost as much as the ReLU itself; use it only
    where nothing else keeps x or dy: right after a Conv2d, which keeps its input and columns but not
    its output, inside a chain whose backward hands each layer a gradient no one else reads, as the
    SSD trunk does).
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)
        self._y = None

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

    def clear_own_cache(self) -> None:
        self._y = None

    def forward(self, x):
        check_input("ReLU", x, ndim=None)
        xp = get_array_module(x)
        if xp is np:
            x = np.ascontiguousarray(x)
            y = x if self.inplace else np.empty_like(x)
            xf, yf, k = _flat(x), _flat(y), cpu_kernels()
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
            # in place: the kernel reads dy[i] before it writes dx[i] at the same index
            dx = dy if self.inplace and dy.flags.writeable else np.empty_like(y)
            yf, dyf, dxf, k = _flat(y), _flat(dy), _flat(dx), cpu_kernels()
            parallel_for(yf.size, lambda a, b: k.relu_backward(yf[a:b], dyf[a:b], dxf[a:b]), grain=1 << 16)
            return dx
        from .cuda_kernels import relu_backward_gpu

        return relu_backward_gpu(y, dy)

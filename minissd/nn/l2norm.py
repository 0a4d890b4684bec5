"""L2 normalisation across channels with a learned per-channel scale (ParseNet): reference, then layer.

At every pixel (n, h, w) the channel vector x is divided by its length and scaled per channel:

    y_c = w_c * x_c / r,   r = sqrt(sum_k x_k^2 + eps)

SSD applies it to conv4_3, whose activations are on a different scale from the deeper maps, with the
scale initialised to 20 and learned (paper section 3.1, "PASCAL VOC2007", citing ParseNet, Liu,
Rabinovich and Berg 2015). ``eps`` sits inside the square root as in the authors' Caffe Normalize layer
(ssd.pytorch adds it outside instead).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .checks import check_input, positive_int
from .module import Module


# --------------------------------------------------------------------------------------------------
# The reference: plain NumPy, the gradient written out from the chain rule.
# --------------------------------------------------------------------------------------------------
def l2norm_forward_ref(x, weight, eps=1e-10):
    """y = weight[c] * x / r for x (N, C, H, W), weight (C,), r = sqrt(sum over channels of x^2 + eps)."""
    x, weight = np.asarray(x), np.asarray(weight)
    r = np.sqrt(np.sum(x ** 2, axis=1, keepdims=True) + eps)           # (N, 1, H, W)
    return weight.reshape(1, -1, 1, 1) * x / r


def l2norm_backward_ref(x, weight, dy, eps=1e-10):
    """Gradients of `l2norm_forward_ref` given dy = dL/dy: returns ``(dx, dweight)``.

    Per pixel, dr/dx_k = x_k / r, so dy_c/dx_k = w_c * (delta_ck / r - x_c * x_k / r^3), and

        dx_k      = w_k * dy_k / r  -  x_k * (sum_c w_c * dy_c * x_c) / r^3
        dweight_c = sum over n, h, w of dy_c * x_c / r
    """
    x, weight, dy = np.asarray(x), np.asarray(weight), np.asarray(dy)
    w = weight.reshape(1, -1, 1, 1)
    r = np.sqrt(np.sum(x ** 2, axis=1, keepdims=True) + eps)
    dx = w * dy / r - x * np.sum(w * dy * x, axis=1, keepdims=True) / r ** 3
    dweight = np.sum(dy * x / r, axis=(0, 2, 3))
    return dx, dweight


# --------------------------------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------------------------------
class L2Norm(Module):
    """Per-pixel L2 normalisation across channels with a learned per-channel scale ``weight`` (C,).

    Backward, with xhat = x / r and g = dy * weight (the reference's formula, regrouped):
    dx = (g - xhat * sum_c(g * xhat)) / r,  dweight[c] = sum over n, h, w of dy * xhat.
    Keeps xhat and r from forward to backward.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10, dtype=np.float32):
        super().__init__()
        self.channels = positive_int(channels, "L2Norm: channels")
        self.eps = float(eps)
        self.add_param("weight", np.full(self.channels, scale, dtype=dtype))
        self._xhat = None
        self._norm = None

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"

    def clear_own_cache(self) -> None:
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

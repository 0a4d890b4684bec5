"""Gradient checking: float64 central differences, as Caffe's checker and torch.autograd.gradcheck do.

The tests (and the walkthroughs) use these to prove every hand-written backward. The scalar that is
differentiated is ``L = sum(f(x) * r)`` for a fixed random upstream gradient ``r``, so dL/dx is exactly
what ``backward(r)`` must return.

* `numeric_grad` perturbs every entry (small tensors);
* `directional_check` compares one directional derivative ``<grad, v>`` with
  ``(L(x + eps v) - L(x - eps v)) / (2 eps)`` for a random unit direction ``v`` (large tensors, whole
  networks), which costs two forward passes whatever the size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .backend import get_array_module, to_cpu

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-8


def numeric_grad(f: Callable[[], object], x, r, eps: float = EPS):
    """d sum(f() * r) / dx by central differences, perturbing ``x`` in place (restored after).

    ``f`` takes no arguments and reads ``x``; ``x`` must be float64.
    """
    xp = get_array_module(x)
    if x.dtype != np.float64:
        raise ValueError(f"numeric_grad needs float64 x, got {x.dtype}")
    grad = xp.zeros_like(x)
    flat_x = x.reshape(-1)
    flat_g = grad.reshape(-1)
    for i in range(flat_x.size):
        old = float(flat_x[i])
        flat_x[i] = old + eps
        plus = float(xp.sum(f() * r))
        flat_x[i] = old - eps
        minus = float(xp.sum(f() * r))
        flat_x[i] = old
        flat_g[i] = (plus - minus) / (2 * eps)
    return grad


def max_rel_error(a, b, atol: float = ATOL) -> float:
    """max |a - b| / max(|a|, |b|, atol), element-wise, as a float."""
    a = to_cpu(a).astype(np.float64)
    b = to_cpu(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    denom = np.maximum(np.maximum(np.abs(a), np.abs(b)), atol)
    return float(np.max(np.abs(a - b) / denom))


def assert_close(actual, expected, rtol: float = RTOL, atol: float = ATOL, name: str = "value") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` element-wise, with a useful message."""
    a = to_cpu(actual).astype(np.float64)
    e = to_cpu(expected).astype(np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), a.shape)
        raise AssertionError(
            f"{name}: max excess error at {i}: got {a[i]!r}, expected {e[i]!r} "
            f"(|diff|={err[i]:.3e}, allowed {bound[i]:.3e}; max rel err {max_rel_error(a, e):.3e})"
        )


def check_layer_gradients(layer, x, rng: np.random.Generator, eps: float = EPS, rtol: float = RTOL,
                          atol: float = ATOL) -> dict:
    """Central-difference check of dx and every parameter gradient of ``layer`` at float64 ``x``.

    Returns ``{name: max relative error}`` and raises AssertionError past ``rtol``/``atol``.
    The layer's parameters must already be float64 (``layer.astype(np.float64)``).
    """
    xp = get_array_module(x)
    if x.dtype != np.float64:
        raise ValueError(f"gradient checks run in float64; x is {x.dtype}")
    y = layer.forward(x)
    r = xp.asarray(rng.standard_normal(y.shape))
    layer.zero_grad()
    r_copy = r.copy()
    dx = layer.backward(r)
    if not bool(xp.all(r == r_copy)):
        raise AssertionError(f"{type(layer).__name__}.backward wrote into its incoming gradient")
    analytic = {"x": dx}
    analytic.update({name: g.copy() for name, _, g in layer.named_parameters()})

    def f():
        return layer.forward(x)

    errors = {}
    assert_close(dx, numeric_grad(f, x, r, eps), rtol, atol, name=f"{type(layer).__name__} dx")
    errors["x"] = max_rel_error(dx, numeric_grad(f, x, r, eps), atol)
    for name, p, _ in layer.named_parameters():
        num = numeric_grad(f, p, r, eps)
        assert_close(analytic[name], num, rtol, atol, name=f"{type(layer).__name__} d{name}")
        errors[name] = max_rel_error(analytic[name], num, atol)
    return errors


def directional_check(loss_and_grads: Callable[[], tuple], arrays: list, rng: np.random.Generator,
                      eps: float = EPS, rtol: float = RTOL) -> tuple[float, float]:
    """Check ``sum_i <grad_i, v_i>`` against central differences along one random direction.

    ``loss_and_grads()`` returns ``(loss, [grad_i])`` for the current values of ``arrays`` (float64,
    changed in place here). Returns ``(analytic, numeric)``; raises AssertionError when they differ
    by more than ``rtol`` relative.
    """
    xp = get_array_module(*arrays)
    loss0, grads = loss_and_grads()
    grads = [g.copy() for g in grads]
    dirs = [xp.asarray(rng.standard_normal(a.shape)) for a in arrays]
    norm = float(np.sqrt(sum(float(xp.sum(d * d)) for d in dirs)))
    dirs = [d / norm for d in dirs]
    analytic = float(sum(float(xp.sum(g * d)) for g, d in zip(grads, dirs, strict=True)))
    for a, d in zip(arrays, dirs, strict=True):
        a += eps * d
    plus, _ = loss_and_grads()
    for a, d in zip(arrays, dirs, strict=True):
        a -= 2 * eps * d
    minus, _ = loss_and_grads()
    for a, d in zip(arrays, dirs, strict=True):
        a += eps * d
    numeric = (float(plus) - float(minus)) / (2 * eps)
    scale = max(abs(analytic), abs(numeric), 1e-12)
    if abs(analytic - numeric) > rtol * scale:
        raise AssertionError(
            f"directional derivative: analytic {analytic!r} vs numeric {numeric!r} "
            f"(rel err {abs(analytic - numeric) / scale:.3e} > {rtol})"
        )
    return analytic, numeric

"""Box encoding against default boxes with variances: paper eq. (2) and the authors' Caffe code.

For a default box d = (d_cx, d_cy, d_w, d_h) and a ground-truth box g, the network regresses

    t_cx = (g_cx - d_cx) / (v_0 d_w)      t_w = log(g_w / d_w) / v_1
    t_cy = (g_cy - d_cy) / (v_0 d_h)      t_h = log(g_h / d_h) / v_1

with variances (v_0, v_1) = (0.1, 0.2). The paper's eq. (2) is the v = (1, 1) case; the authors' code
divides by the variances (a fixed rescaling of the regression targets, ~unit variance), and every port
since does the same. Both functions are array-module generic: CuPy arrays stay on the GPU.

Paper: section 2.2 "Training objective", eq. (2).
Walkthrough: docs/03-matching-and-encoding.md.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module

VARIANCES = (0.1, 0.2)


def _check_variances(variances):
    try:
        v0, v1 = (float(v) for v in variances)
    except (TypeError, ValueError):
        raise ValueError(f"variances must be two numbers, got {variances!r}") from None
    if not (math.isfinite(v0) and math.isfinite(v1) and v0 > 0 and v1 > 0):
        raise ValueError(f"variances must be positive and finite, got {variances!r}")
    return v0, v1


def _check_pair(name, x, priors):
    xp = get_array_module(x, priors)
    x = xp.asarray(x)
    priors = xp.asarray(priors)
    for n, a in ((name, x), ("priors_cxcywh", priors)):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{n} must hold real numbers, got dtype {a.dtype}")
    if priors.ndim != 2 or priors.shape[1] != 4:
        raise ValueError(f"priors_cxcywh must have shape (P, 4), got {tuple(priors.shape)}")
    if x.ndim < 2 or x.shape[-2:] != priors.shape:
        raise ValueError(f"{name} must have shape (..., P, 4) with P = {priors.shape[0]} "
                         f"(the number of priors), got {tuple(x.shape)}")
    dtype = np.result_type(x.dtype, priors.dtype, np.float32)  # float32 stays float32; ints -> float64
    if x.dtype.kind != "f" or priors.dtype.kind != "f":
        dtype = np.result_type(dtype, np.float64)
    x = x.astype(dtype, copy=False)
    priors = priors.astype(dtype, copy=False)
    if x.size and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf")
    if priors.size:
        if not bool(xp.all(xp.isfinite(priors))):
            raise ValueError("priors_cxcywh contains NaN or inf")
        if not bool(xp.all(priors[:, 2:] > 0)):
            raise ValueError("priors_cxcywh has a box with zero or negative width/height")
    return xp, x, priors


def encode(matched_xyxy, priors_cxcywh, variances=VARIANCES):
    """Regression targets of boxes ``matched_xyxy`` relative to the default boxes.

    Parameters
    ----------
    matched_xyxy : (..., P, 4)
        One box per prior (normalised xyxy), e.g. ``match``'s output. Every box must have positive
        width and height: log(g_w / d_w) of a zero-width box is -inf, so such boxes are rejected here
        with a ValueError rather than turned into an infinite loss later.
    priors_cxcywh : (P, 4)
    variances : (v_0, v_1)

    Returns
    -------
    loc : (..., P, 4) (t_cx, t_cy, t_w, t_h), float32 if both inputs are float32, else float64.

    Paper: section 2.2, eq. (2).
    """
    v0, v1 = _check_variances(variances)
    xp, g, d = _check_pair("matched_xyxy", matched_xyxy, priors_cxcywh)
    g_wh = g[..., 2:] - g[..., :2]                       # (..., P, 2)
    if g.size and not bool(xp.all(g_wh > 0)):
        bad = int(xp.argmin(xp.min(g_wh, axis=-1).reshape(-1)))
        raise ValueError(f"matched_xyxy has a box with zero or negative width/height (flat box index {bad}); "
                         "ground-truth boxes must have positive area to be encoded")
    g_cxcy = (g[..., :2] + g[..., 2:]) / 2
    t_xy = (g_cxcy - d[:, :2]) / (v0 * d[:, 2:])
    t_wh = xp.log(g_wh / d[:, 2:]) / v1
    return xp.concatenate([t_xy, t_wh], axis=-1)


def decode(loc, priors_cxcywh, variances=VARIANCES):
    """Boxes (normalised xyxy) from regression outputs ``loc``: the inverse of `encode`.

    Parameters
    ----------
    loc : (..., P, 4) (t_cx, t_cy, t_w, t_h)
    priors_cxcywh : (P, 4)
    variances : (v_0, v_1)

    Returns
    -------
    boxes_xyxy : (..., P, 4), x1 <= x2 and y1 <= y2 always (widths are exp(.) > 0).

    Paper: section 2.2, eq. (2), solved for g.
    """
    v0, v1 = _check_variances(variances)
    xp, t, d = _check_pair("loc", loc, priors_cxcywh)
    cxcy = d[:, :2] + t[..., :2] * v0 * d[:, 2:]
    half = d[:, 2:] * xp.exp(t[..., 2:] * v1) / 2
    return xp.concatenate([cxcy - half, cxcy + half], axis=-1)

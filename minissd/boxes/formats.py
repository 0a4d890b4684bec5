"""Box formats: corners ``xyxy`` (x1, y1, x2, y2) and centre-size ``cxcywh`` (cx, cy, w, h).

Boxes inside the model are normalised xyxy in [0, 1]; default boxes are cxcywh, the form eq. (2) of the
paper encodes against. Both functions work on NumPy and CuPy arrays of any leading shape (..., 4).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module


def _as_float_boxes(b, name):
    xp = get_array_module(b)
    b = xp.asarray(b)
    if b.ndim == 0 or b.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(b.shape)}")
    if b.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {b.dtype}")
    if b.dtype.kind != "f":
        b = b.astype(np.float64)
    return xp, b


def xyxy_to_cxcywh(b):
    """(x1, y1, x2, y2) -> (cx, cy, w, h). ``b`` (..., 4); integer input becomes float64."""
    xp, b = _as_float_boxes(b, "b (xyxy)")
    return xp.concatenate([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], axis=-1)


def cxcywh_to_xyxy(b):
    """(cx, cy, w, h) -> (x1, y1, x2, y2). ``b`` (..., 4); integer input becomes float64."""
    xp, b = _as_float_boxes(b, "b (cxcywh)")
    half = b[..., 2:] / 2
    return xp.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


class Detections(NamedTuple):
    """Detections of one image, best first.

    boxes : (K, 4) normalised xyxy (pixels once scaled at the edge)
    labels : (K,) int64 in 1..C
    scores : (K,) float
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

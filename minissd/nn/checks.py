"""Argument and input checks shared by the layers: each raises ValueError naming the layer and the value."""
from __future__ import annotations

import numpy as np

from ..backend import device_of, get_array_module


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    """``value`` (an int, or a pair of ints for height and width) as a pair of ints >= ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        both = (value[0], value[1])
    else:
        both = (value, value)
    out = []
    for v in both:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        if int(v) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_float(x, name: str) -> None:
    """float32 or float64, else ValueError naming ``name``."""
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")


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

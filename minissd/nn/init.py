"""Weight initialisation, as the SSD authors' Caffe code does it.

The SSD prototxts (Liu et al., ECCV 2016; the `ssd` branch of Caffe) initialise every new convolution
with ``weight_filler { type: "xavier" }`` and ``bias_filler { type: "constant" value: 0 }``. Caffe's
"xavier" filler is not Glorot's average-of-fans version: with its default ``variance_norm: FAN_IN`` it
draws ``U(-a, a)`` with ``a = sqrt(3 / fan_in)``, so the weights have variance ``1 / fan_in``.
``he`` is Caffe's "msra" filler (He et al., 2015): ``N(0, 2 / fan_in)``, the right scale in front of a
ReLU. ``fan_in`` of a conv weight (F, C, KH, KW) is ``C * KH * KW``.
"""
from __future__ import annotations

import numpy as np

INITS = ("xavier", "he")


def fan_in(shape) -> int:
    """Inputs feeding one output unit: C*KH*KW for a (F, C, KH, KW) conv weight, C for (F, C)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"fan_in needs a weight shape with at least 2 dims, got {shape}")
    return int(np.prod(shape[1:]))


def xavier_uniform(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Caffe's "xavier" filler: U(-sqrt(3/fan_in), sqrt(3/fan_in)), variance 1/fan_in."""
    a = np.sqrt(3.0 / fan_in(shape))
    return rng.uniform(-a, a, size=shape).astype(dtype)


def he_normal(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Caffe's "msra" filler (He et al., 2015): N(0, 2/fan_in)."""
    std = np.sqrt(2.0 / fan_in(shape))
    return (rng.standard_normal(size=shape) * std).astype(dtype)


def init_weight(kind: str, shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Dispatch on ``kind`` ("xavier" or "he")."""
    if kind == "xavier":
        return xavier_uniform(shape, rng, dtype)
    if kind == "he":
        return he_normal(shape, rng, dtype)
    raise ValueError(f"init={kind!r} is not known; choose one of {', '.join(INITS)}")

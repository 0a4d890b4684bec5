"""Default boxes ("priors"): a fixed grid of boxes at several scales and aspect ratios.

SSD predicts, for every location of several feature maps, offsets and class scores relative to a few
default boxes centred on that location. The boxes of map k have scale s_k (a fraction of the image) and
aspect ratios a_r in {1, 2, 3, 1/2, 1/3}; width s_k sqrt(a_r), height s_k / sqrt(a_r); one extra box of
ratio 1 has scale s'_k = sqrt(s_k s_{k+1}).

Paper: section 2.2 "Choosing scales and aspect ratios for default boxes", eq. (4).
Walkthrough: docs/02-default-boxes.md.

The built-in configs use the authors' Caffe numbers (``min_sizes``/``max_sizes`` in pixels), which differ
from eq. (4): conv4_3 gets its own scale 0.1 (0.07 for SSD512) and the remaining scales are spaced in
whole percent, rounded down. `PriorConfig.from_scales` builds a config with eq. (4)'s linear spacing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PriorConfig:
    """Where the default boxes are and how big.

    Attributes
    ----------
    image_size : int
        Side of the (square) network input in pixels; sizes and steps below are in pixels of it.
    feature_maps : tuple of int
        Side f_k of each source feature map (square maps).
    steps : tuple of float
        Pixel distance between neighbouring box centres on map k; centres are at
        ((j + offset) * step, (i + offset) * step) / image_size. Caffe's SSD300 uses 100 and 300 for the
        3x3 and 1x1 maps, not 300 / f_k.
    min_sizes : tuple of float
        s_k * image_size: the side of the ratio-1 box of map k.
    max_sizes : tuple of float
        s_{k+1} * image_size: the extra ratio-1 box has side sqrt(min_size * max_size).
    aspect_ratios : tuple of tuple of float
        Ratios r > 1 per map besides 1; with ``flip`` each adds the boxes r and 1/r.
    clip : bool
        Clip boxes to [0, 1] (in xyxy) before returning them in cxcywh. The authors' SSD300/SSD512 do not.
    flip : bool
        Add 1/r for every ratio r (the paper's {1, 2, 3, 1/2, 1/3}).
    offset : float
        Position of a box centre inside its cell, in cells (0.5: the centre of the cell).
    """

    image_size: int
    feature_maps: tuple
    steps: tuple
    min_sizes: tuple
    max_sizes: tuple
    aspect_ratios: tuple
    clip: bool = False
    flip: bool = True
    offset: float = 0.5
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        # Freeze the sequences so a config can be hashed, compared and stored as JSON.
        for attr in ("feature_maps", "steps", "min_sizes", "max_sizes"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        object.__setattr__(self, "aspect_ratios", tuple(tuple(r) for r in self.aspect_ratios))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when the config cannot describe a set of boxes."""
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size <= 0:
            raise ValueError(f"PriorConfig.image_size must be a positive int, got {self.image_size!r}")
        m = len(self.feature_maps)
        if m == 0:
            raise ValueError("PriorConfig.feature_maps is empty")
        for attr in ("steps", "min_sizes", "max_sizes", "aspect_ratios"):
            if len(getattr(self, attr)) != m:
                raise ValueError(f"PriorConfig.{attr} has {len(getattr(self, attr))} entries, "
                                 f"feature_maps has {m}")
        for f in self.feature_maps:
            if not isinstance(f, (int, np.integer)) or f <= 0:
                raise ValueError(f"PriorConfig.feature_maps must be positive ints, got {f!r}")
        for attr in ("steps", "min_sizes", "max_sizes"):
            for v in getattr(self, attr):
                if not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) and v > 0):
                    raise ValueError(f"PriorConfig.{attr} must be positive finite numbers, got {v!r}")
        for k, ratios in enumerate(self.aspect_ratios):
            for r in ratios:
                if not (isinstance(r, (int, float, np.integer, np.floating)) and math.isfinite(r) and r > 0):
                    raise ValueError(f"PriorConfig.aspect_ratios[{k}] must hold positive numbers, got {r!r}")
                if r == 1:
                    raise ValueError(f"PriorConfig.aspect_ratios[{k}] lists 1; ratio 1 is always present")
        if not (0.0 <= self.offset <= 1.0):
            raise ValueError(f"PriorConfig.offset must be in [0, 1], got {self.offset!r}")

    @classmethod
    def from_scales(cls, image_size, feature_maps, aspect_ratios, s_min=0.2, s_max=0.9, steps=None,
                    first_scale=None, **kwargs) -> "PriorConfig":
        """A config with the paper's linearly spaced scales, eq. (4).

        s_k = s_min + (s_max - s_min) / (m - 1) * (k - 1), k = 1..m, and s_{m+1} continues the line
        (it only sizes the extra box of the last map). With ``first_scale`` (the authors use 0.1 for
        conv4_3), map 1 gets that scale and eq. (4) spaces maps 2..m.

        Paper: section 2.2, eq. (4).
        """
        m = len(feature_maps)
        lin = list(feature_maps) if first_scale is None else list(feature_maps)[1:]
        n = len(lin)
        if n < 2:
            raise ValueError("PriorConfig.from_scales needs at least two maps to space scales linearly")
        delta = (s_max - s_min) / (n - 1)
        scales = [s_min + delta * k for k in range(n + 1)]  # s_1 .. s_{n+1}
        if first_scale is not None:
            scales = [first_scale] + scales
        if steps is None:
            steps = [image_size / f for f in feature_maps]
        sizes = [s * image_size for s in scales]
        return cls(image_size=image_size, feature_maps=tuple(feature_maps), steps=tuple(steps),
                   min_sizes=tuple(sizes[:m]), max_sizes=tuple(sizes[1:m + 1]),
                   aspect_ratios=tuple(tuple(r) for r in aspect_ratios),
                   name=kwargs.pop("name", "eq4"), **kwargs)

    def to_dict(self) -> dict:
        """JSON-able description (for checkpoints and model configs)."""
        return {"image_size": int(self.image_size), "feature_maps": [int(f) for f in self.feature_maps],
                "steps": [float(s) for s in self.steps], "min_sizes": [float(s) for s in self.min_sizes],
                "max_sizes": [float(s) for s in self.max_sizes],
                "aspect_ratios": [[float(r) for r in rs] for rs in self.aspect_ratios],
                "clip": bool(self.clip), "flip": bool(self.flip), "offset": float(self.offset),
                "name": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        return cls(**d)


PRIOR_CONFIGS = {
    # The authors' models/VGGNet/VOC0712/SSD_300x300 (ssd_pascal.py): min_ratio 20, max_ratio 90 in whole
    # percent, step floor(70 / 4) = 17, conv4_3 at 10 %: sizes 30, 60, 111, 162, 213, 264, 315 px.
    "ssd300": PriorConfig(
        image_size=300,
        feature_maps=(38, 19, 10, 5, 3, 1),
        steps=(8, 16, 32, 64, 100, 300),
        min_sizes=(30, 60, 111, 162, 213, 264),
        max_sizes=(60, 111, 162, 213, 264, 315),
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
        name="ssd300",
    ),
    # ssd_pascal_512.py: min_ratio 15, max_ratio 90, step floor(75 / 5) = 15, conv4_3 at 7 % (max 15 %).
    "ssd512": PriorConfig(
        image_size=512,
        feature_maps=(64, 32, 16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128, 256, 512),
        min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
        max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
        name="ssd512",
    ),
    # The small CPU model (128 px, maps 16/8/4/2/1). Ratio-1 sides from 16 px (12.5 % of the image; its
    # ratio-2 boxes are 11 px tall, 8.8 %) to sqrt(112 * 128) = 120 px (93.5 %), about 2x per map. Chosen
    # on the built-in shapes data (objects 10 %..80 % of the image side): against (10, 24, 48, 80, 108)
    # it gives 3.3 instead of 1.9 positive boxes per object and leaves 4.7 % instead of 17.6 % of the
    # objects without any box of IoU >= 0.5 (docs/02-default-boxes.md).
    "small": PriorConfig(
        image_size=128,
        feature_maps=(16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128),
        min_sizes=(16, 32, 56, 88, 112),
        max_sizes=(32, 56, 88, 112, 128),
        aspect_ratios=((2,), (2, 3), (2, 3), (2,), (2,)),
        name="small",
    ),
}


def get_config(config) -> PriorConfig:
    """A `PriorConfig` from a config, a name in `PRIOR_CONFIGS`, or a dict from `PriorConfig.to_dict`."""
    if isinstance(config, PriorConfig):
        return config
    if isinstance(config, str):
        try:
            return PRIOR_CONFIGS[config]
        except KeyError:
            raise ValueError(f"unknown prior config {config!r}; choose one of "
                             f"{', '.join(sorted(PRIOR_CONFIGS))} or pass a PriorConfig") from None
    if isinstance(config, dict):
        return PriorConfig.from_dict(config)
    raise ValueError(f"config must be a PriorConfig, a name or a dict, got {type(config).__name__}")


def _location_shapes(config: PriorConfig, k: int) -> list:
    """(width, height) in pixels of the boxes at one location of map k, in the documented order."""
    s, s_next = config.min_sizes[k], config.max_sizes[k]
    shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
    for r in config.aspect_ratios[k]:
        shapes.append((s * math.sqrt(r), s / math.sqrt(r)))
        if config.flip:
            shapes.append((s / math.sqrt(r), s * math.sqrt(r)))
    return shapes


def num_priors_per_location(config) -> list:
    """Boxes per location of each map: 2 + 2 * len(ratios) with flip (4 for [2], 6 for [2, 3])."""
    config = get_config(config)
    return [len(_location_shapes(config, k)) for k in range(len(config.feature_maps))]


def num_priors(config) -> int:
    """Total number of default boxes: sum over maps of f_k^2 * boxes per location."""
    config = get_config(config)
    return int(sum(f * f * n for f, n in zip(config.feature_maps, num_priors_per_location(config), strict=True)))


def make_priors(config) -> np.ndarray:
    """All default boxes of a config, normalised ``cxcywh``, float64.

    Parameters
    ----------
    config : PriorConfig, str or dict
        A config or a name in `PRIOR_CONFIGS` ("ssd300": 8732 boxes, "ssd512": 24564, "small": 1524).

    Returns
    -------
    priors_cxcywh : (P, 4) float64
        Order: map by map; within a map row-major over locations (i = row, j = column); within a
        location: size s_k ratio 1, size sqrt(s_k s_{k+1}) ratio 1, then for each ratio r the boxes r
        and 1/r. The model's heads emit their outputs in exactly this order.

    Paper: section 2.2, eq. (4) (with the authors' Caffe sizes for the built-in configs).
    """
    config = get_config(config)
    size = float(config.image_size)
    blocks = []
    for k, f in enumerate(config.feature_maps):
        wh = np.array(_location_shapes(config, k), dtype=np.float64) / size           # (A, 2)
        centres = (np.arange(f, dtype=np.float64) + config.offset) * config.steps[k] / size  # (f,)
        cy, cx = np.meshgrid(centres, centres, indexing="ij")                         # (f, f) each
        a = wh.shape[0]
        block = np.empty((f, f, a, 4), dtype=np.float64)
        block[..., 0] = cx[:, :, None]
        block[..., 1] = cy[:, :, None]
        block[..., 2] = wh[:, 0]
        block[..., 3] = wh[:, 1]
        blocks.append(block.reshape(-1, 4))                                          # (f*f*A, 4)
    priors = np.concatenate(blocks, axis=0)
    if config.clip:
        # Clip in corner form: clipping cx, cy, w, h each to [0, 1] (what some ports do) is not the
        # same box.
        x1y1 = np.clip(priors[:, :2] - priors[:, 2:] / 2, 0.0, 1.0)
        x2y2 = np.clip(priors[:, :2] + priors[:, 2:] / 2, 0.0, 1.0)
        priors = np.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], axis=1)
    return np.ascontiguousarray(priors)

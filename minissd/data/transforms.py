"""The SSD data augmentation (paper section 2.2 "Data augmentation", section 3.6) and the eval resize.

`TrainTransform` follows the authors' Caffe data layer (``ssd_pascal.py`` settings):

1. photometric distortion, each with probability 1/2: brightness +-32, contrast x[0.5, 1.5],
   saturation x[0.5, 1.5], hue +-18 degrees; contrast either before or after the HSV steps ("random
   order"); a random channel permutation with ``channel_swap_prob`` (0 in ssd_pascal.py);
2. zoom out ("expand"), with probability 1/2: place the image at a random integer offset on a canvas
   ``r`` times larger, r ~ U[1, 4], filled with the mean colour;
3. min-IoU random crop: candidate patches of scale s ~ U[0.3, 1] (the paper's text says [0.1, 1]:
   ``crop_min_scale=0.1``) and aspect ratio in [1/2, 2] (constrained so the patch fits), one per
   sampler -- no constraint, min IoU 0.1, 0.3, 0.5, 0.7, 0.9 -- found in up to 50 trials each, plus the
   whole image; one of the candidates that were found is used. A patch satisfies a sampler when its
   IoU with *at least one* object reaches the threshold (Caffe's ``SatisfySampleConstraint``; the
   ``and`` in ssd.pytorch's test makes it accept every patch) and at least one object's centre lies
   inside it. Objects whose centre is inside are kept, clipped to the patch;
4. horizontal flip with probability 1/2;
5. resize to ``size`` x ``size`` (bilinear) and normalise: (pixel - mean) / std, channel-first.

Where the authors' Caffe code does a step differently, both are here as named variants
(``photometric_variant``, ``crop_variant``, ``resize_variant``: "minissd", the default, or "caffe"):

* hue: minissd turns the hue by up to ``hue_delta`` degrees and wraps around the colour circle. Caffe's
  ``hue_delta: 18`` is in OpenCV's 8-bit hue units (0..179, 2 degrees each: +-36 degrees; the float
  delta is truncated to whole units) and is added with saturation to 0..255: a red pixel pushed below
  hue 0 *clamps* at 0 (stays pure red), while one pushed past 179 wraps (OpenCV's HSV->BGR reads the
  hue modulo 180);
* crop: minissd also requires at least one object centre inside a sampled patch; Caffe's samplers test
  only the IoU, and objects are then kept by centre (``emit_constraint: CENTER``), so a Caffe patch
  may keep no object at all;
* resize: minissd resizes bilinearly; Caffe draws one of LINEAR, AREA, NEAREST, CUBIC, LANCZOS4 per
  image (``interp_mode`` in ssd_pascal.py), here Pillow's BILINEAR, BOX, NEAREST, BICUBIC, LANCZOS.

Expansion, crop and resize are composed into one affine map and rendered in one step: only the part
of the source image that lands in the output is resized, straight from the source pixels (Pillow
``resize(box=...)``), and the rest is mean fill. That keeps a 4x zoom-out as cheap as no zoom and
makes the boxes follow the pixels exactly (tests/test_transforms.py checks this on random images).

All randomness comes from the ``rng`` argument, a ``numpy.random.Generator``.

Walkthrough: docs/11-augmentation.md
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..boxes import iou
from ..model.configs import UNIT_STD, VGG_MEAN  # the one definition: RGB order, 0..255 pixel units

CROP_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9)  # None: a random patch with no overlap constraint
VARIANTS = ("minissd", "caffe")
# Caffe's five resize modes (ssd_pascal.py interp_mode) as Pillow filters: LINEAR, AREA, NEAREST,
# CUBIC, LANCZOS4.
CAFFE_RESIZE_FILTERS = (Image.BILINEAR, Image.BOX, Image.NEAREST, Image.BICUBIC, Image.LANCZOS)


def _check_variant(value, name: str) -> str:
    if value not in VARIANTS:
        raise ValueError(f"{name}: expected one of {VARIANTS}, got {value!r}")
    return value


def _as_channels(value, name: str) -> np.ndarray:
    arr = np.asarray(value, np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected a number or 3 finite numbers (RGB), got {value!r}")
    return arr


def _mean_std(mean, std) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated per-channel ``(mean, std, 1 / std)`` for the normalisation ``(pixel - mean) / std``."""
    mean = _as_channels(mean, "mean")
    std = _as_channels(std, "std")
    if np.any(std <= 0):
        raise ValueError(f"std: expected positive values, got {std}")
    return mean, std, (1.0 / std).astype(np.float32)


def check_inputs(image, boxes_px, labels):
    """Validate a transform's inputs; returns (image, boxes float32 (G, 4), labels (G,))."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image: empty image of shape {image.shape}")
    boxes = np.asarray(boxes_px, np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_px: expected (G, 4) pixel xyxy, got shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("boxes_px: contains NaN or inf")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError("boxes_px: a box has x2 < x1 or y2 < y1 (expected xyxy)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(boxes):
        raise ValueError(f"labels: expected ({len(boxes)},) to match boxes_px, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integers, got {labels.dtype}")
    return image, boxes, labels


# --------------------------------------------------------------------------------------------------
# 1. Photometric distortion (Caffe DistortImage; uint8 in, uint8 out, saturating at every step as
#    OpenCV's convertTo does).

def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 255.0, out=x).astype(np.uint8)


class _Distortion:
    """The random draws of one photometric distortion, applied by calling it on an image."""

    def __init__(self, rng, brightness_delta=32.0, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta=18.0, channel_swap_prob=0.0, prob=0.5, variant="minissd"):
        self.variant = _check_variant(variant, "variant")
        self.brightness = rng.uniform(-brightness_delta, brightness_delta) if rng.random() < prob else None
        self.contrast_first = rng.random() < 0.5
        self.contrast = rng.uniform(*contrast_range) if rng.random() < prob else None
        self.saturation = rng.uniform(*saturation_range) if rng.random() < prob else None
        self.hue = rng.uniform(-hue_delta, hue_delta) if rng.random() < prob else None
        if self.hue is not None and self.variant == "caffe":
            self.hue = int(self.hue)   # Caffe: a float delta handed to an int parameter (truncated)
        self.channels = rng.permutation(3) if channel_swap_prob > 0 and rng.random() < channel_swap_prob else None

    def _contrast(self, img):
        if self.contrast is None:
            return img
        return _to_uint8(img.astype(np.float32) * np.float32(self.contrast))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = image
        if self.brightness is not None:
            img = _to_uint8(img.astype(np.float32) + np.float32(self.brightness))
        if self.contrast_first:
            img = self._contrast(img)
        if self.saturation is not None or self.hue is not None:
            hsv = np.array(Image.fromarray(img).convert("HSV"))  # (H, W, 3) uint8, hue 0..255 = 0..360 deg
            if self.saturation is not None:
                hsv[:, :, 1] = _to_uint8(hsv[:, :, 1].astype(np.float32) * np.float32(self.saturation))
            if self.hue is not None and self.variant == "caffe":
                hsv[:, :, 0] = caffe_hue_shift(hsv[:, :, 0], self.hue)
            elif self.hue is not None:
                shift = int(round(self.hue * 256.0 / 360.0))
                hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + shift) % 256  # hue is an angle: wrap
            img = np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))
        if not self.contrast_first:
            img = self._contrast(img)
        if self.channels is not None:
            img = np.ascontiguousarray(img[:, :, self.channels])
        return img


def caffe_hue_shift(hue_pil, delta_cv: int) -> np.ndarray:
    """Caffe's AdjustHue on a Pillow hue channel (0..255 = 0..360 degrees): uint8 (H, W) -> same.

    Caffe adds ``delta_cv`` OpenCV hue units (2 degrees each) to the 8-bit hue 0..179 with saturation
    to 0..255, and OpenCV's HSV->BGR reads the result modulo 180. So a hue pushed below 0 clamps at 0
    (red stays red: no wrap to magenta), one pushed past 179 wraps around (179 + 18 = 197 never reaches
    the 255 clamp). Here the same in Pillow's 256-step hue.
    """
    shift = int(round(2.0 * delta_cv * 256.0 / 360.0))
    hue = hue_pil.astype(np.int16) + shift
    return np.where(hue < 0, 0, hue % 256).astype(np.uint8)


def photometric_distort(image, rng, brightness_delta=32.0, contrast_range=(0.5, 1.5),
                        saturation_range=(0.5, 1.5), hue_delta=18.0, channel_swap_prob=0.0, prob=0.5,
                        variant="minissd"):
    """Random brightness, contrast, saturation, hue and channel order: (H, W, 3) uint8 -> same.

    Each of brightness, contrast, saturation and hue applies with probability ``prob``; contrast is
    applied before or after the saturation/hue pair with probability 1/2 each (Caffe's two orders).
    Brightness adds a delta, contrast and saturation scale; every step saturates to 0..255. The hue:
    ``variant="minissd"`` turns it by up to ``hue_delta`` degrees, wrapping around the colour circle;
    ``variant="caffe"`` reads ``hue_delta`` in OpenCV's 8-bit hue units (2 degrees each; ssd_pascal.py's
    18 is +-36 degrees), truncates the delta to whole units, and clamps at hue 0 (`caffe_hue_shift`).
    Paper: section 2.2 "Data augmentation" (photometric distortions, as in Howard 2013).
    """
    return _Distortion(rng, brightness_delta, contrast_range, saturation_range, hue_delta,
                       channel_swap_prob, prob, variant)(np.asarray(image))


# --------------------------------------------------------------------------------------------------
# 3. The min-IoU crop (Caffe batch samplers).

def sample_crop(boxes_px, width, height, rng, min_ious=CROP_MIN_IOUS, min_scale=0.3, max_scale=1.0,
                aspect_range=(0.5, 2.0), max_trials=50, require_centre: bool = True):
    """Choose a crop patch of a ``width`` x ``height`` image with objects ``boxes_px`` (G, 4).

    Returns the patch (x1, y1, x2, y2) in pixels (float). The candidates are the whole image and, per
    entry of ``min_ious``, the first of ``max_trials`` random patches that satisfies it (None: any
    patch); one found candidate is drawn uniformly, as Caffe's GenerateBatchSamples + random pick.
    A patch of scale s and aspect a has normalised width s sqrt(a) and height s / sqrt(a), with a
    limited to [max(a_min, s^2), min(a_max, 1 / s^2)] so that the patch fits in the image.
    ``require_centre`` (minissd's rule): a patch must also hold at least one object's centre; False is
    Caffe's sampler, which tests the IoU only (the caller keeps objects by centre, so a patch may keep none).
    Paper: section 2.2 "Data augmentation".
    """
    whole = (0.0, 0.0, float(width), float(height))
    boxes = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or not min_ious:
        return whole  # Caffe: without objects no constrained sampler can be satisfied
    k = len(min_ious)
    shape = (k, max_trials)
    scale = rng.uniform(min_scale, max_scale, size=shape)
    lo = np.maximum(aspect_range[0], scale ** 2)
    hi = np.minimum(aspect_range[1], 1.0 / scale ** 2)
    aspect = lo + rng.random(shape) * (hi - lo)
    w = scale * np.sqrt(aspect)
    h = scale / np.sqrt(aspect)
    x1 = rng.random(shape) * (1.0 - w)
    y1 = rng.random(shape) * (1.0 - h)
    patches = np.stack([x1 * width, y1 * height, (x1 + w) * width, (y1 + h) * height], -1).reshape(-1, 4)
    # The one IoU (minissd.boxes.iou). The local copy that stood here divided by max(union, 1e-12)
    # where iou returns 0 for a union <= 0; kept bit for bit all the same: a patch covers scale^2 of the
    # image (scale >= min_scale > 0), so the union is never below 1e-12 and the same operations remain.
    overlap = iou(patches, boxes)  # (k * T, G)
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    centre_in = ((cx[None] >= patches[:, 0:1]) & (cx[None] <= patches[:, 2:3])
                 & (cy[None] >= patches[:, 1:2]) & (cy[None] <= patches[:, 3:4]))  # (k * T, G)
    thresholds = np.array([-1.0 if t is None else float(t) for t in min_ious])
    # The "or": one object reaching the threshold is enough (Caffe). ssd.pytorch's
    # `if overlap.min() < min_iou and max_iou < overlap.max(): continue` never rejects anything.
    meets = (overlap >= np.repeat(thresholds, max_trials)[:, None]).any(1)
    if require_centre:
        meets &= centre_in.any(1)
    meets = meets.reshape(k, max_trials)
    candidates = [whole]
    for s in range(k):
        found = np.flatnonzero(meets[s])
        if found.size:
            candidates.append(tuple(patches[s * max_trials + found[0]]))
    return candidates[int(rng.integers(len(candidates)))]


# --------------------------------------------------------------------------------------------------
# Rendering: expansion + crop + resize as one map from source pixels to output pixels.

def render(image, size: int, fill, offset=(0, 0), canvas_size=None, crop=None, distort=None,
           resample=Image.BILINEAR) -> np.ndarray:
    """The ``size`` x ``size`` uint8 image seen through ``crop`` of the expanded canvas.

    The source ``image`` (H, W, 3) sits at integer ``offset`` (ox, oy) on a canvas of ``canvas_size``
    (CW, CH) filled with ``fill`` (3,) uint8; ``crop`` (x1, y1, x2, y2) is a patch of that canvas in
    pixels, stretched to the output. Only the visible part of the source is resized (bilinear,
    antialiased when shrinking), so a 4x zoom-out costs no more than no zoom. ``distort``, if given,
    maps the resized source piece (h, w, 3) uint8 to a new one before it is pasted (the fill stays the
    mean, as when the distortion comes before the zoom-out). ``resample``: the Pillow filter.
    """
    distort = distort or (lambda piece: piece)
    height, width = image.shape[:2]
    if canvas_size is None:
        canvas_size = (width, height)
    if crop is None:
        crop = (0.0, 0.0, float(canvas_size[0]), float(canvas_size[1]))
    ox, oy = offset
    cx1, cy1, cx2, cy2 = crop
    sx, sy = size / (cx2 - cx1), size / (cy2 - cy1)  # output pixels per canvas pixel
    # The source's extent in output pixels, rounded to whole output pixels.
    dx1 = int(round(min(max((ox - cx1) * sx, 0.0), size)))
    dx2 = int(round(min(max((ox + width - cx1) * sx, 0.0), size)))
    dy1 = int(round(min(max((oy - cy1) * sy, 0.0), size)))
    dy2 = int(round(min(max((oy + height - cy1) * sy, 0.0), size)))
    if (dx1, dy1, dx2, dy2) == (0, 0, size, size) and ox == 0 and oy == 0 and crop == (0.0, 0.0, width, height):
        return distort(np.asarray(Image.fromarray(image).resize((size, size), resample)))
    out = np.empty((size, size, 3), np.uint8)
    out[...] = fill
    if dx2 > dx1 and dy2 > dy1:
        # The source rectangle that maps exactly onto the rounded destination (source pixel coords).
        src = (min(max(cx1 + dx1 / sx - ox, 0.0), width), min(max(cy1 + dy1 / sy - oy, 0.0), height),
               min(max(cx1 + dx2 / sx - ox, 0.0), width), min(max(cy1 + dy2 / sy - oy, 0.0), height))
        if src[2] > src[0] and src[3] > src[1]:
            piece = Image.fromarray(image).resize((dx2 - dx1, dy2 - dy1), resample, box=src)
            out[dy1:dy2, dx1:dx2] = distort(np.asarray(piece))
    return out


def normalize_chw(image_hwc, mean, inv_std) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32 = (pixel - mean) / std."""
    chw = image_hwc.transpose(2, 0, 1).astype(np.float32)  # (3, S, S)
    chw -= mean[:, None, None]
    chw *= inv_std[:, None, None]
    return chw


class TrainTransform:
    """The SSD training augmentation: (image, pixel boxes, labels, rng) -> (chw, normalised boxes, labels).

    Parameters
    ----------
    size : int, output side S.
    mean, std : RGB statistics in 0..255 pixel units (a number or 3); output = (pixel - mean) / std.
        Defaults: the VGG mean (123, 117, 104) and std 1, as Caffe SSD.
    photometric, expand, crop, flip : bool, switch each step on or off.
    expand_ratio : largest zoom-out factor (4.0); expand_prob : its probability (0.5).
    crop_min_scale : smallest crop scale (0.3, Caffe; 0.1 is the paper's text); crop_max_scale (1.0).
    crop_aspect : (min, max) crop aspect ratio (0.5, 2.0); crop_min_ious : the samplers;
    crop_max_trials : trials per sampler (50).
    flip_prob : horizontal flip probability (0.5).
    brightness_delta, contrast_range, saturation_range, hue_delta, channel_swap_prob, photometric_prob :
        the photometric settings of ssd_pascal.py (``hue_delta`` in degrees for the minissd variant, in
        OpenCV hue units of 2 degrees for the caffe one).
    photometric_variant, crop_variant, resize_variant : "minissd" (default) or "caffe", where the two
        differ (see the module docstring): the hue shift, the crop's object-centre rule, the resize filter.

    ``__call__(image (H, W, 3) uint8, boxes_px (G, 4) xyxy, labels (G,), rng)`` returns
    ``(chw (3, S, S) float32, boxes (K, 4) float32 normalised xyxy in [0, 1], labels (K,))`` where the
    K kept objects are those whose centre survived the crop, in their input order (labels are only
    selected, never interpreted: any integer array works and comes back filtered the same way).
    Paper: section 2.2 "Data augmentation". Walkthrough: docs/11-augmentation.md
    """

    def __init__(self, size: int, mean=VGG_MEAN, std=UNIT_STD, photometric: bool = True, expand: bool = True,
                 crop: bool = True, flip: bool = True, expand_ratio: float = 4.0, expand_prob: float = 0.5,
                 crop_min_scale: float = 0.3, crop_max_scale: float = 1.0, crop_aspect=(0.5, 2.0),
                 crop_min_ious=CROP_MIN_IOUS, crop_max_trials: int = 50, flip_prob: float = 0.5,
                 brightness_delta: float = 32.0, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: float = 18.0, channel_swap_prob: float = 0.0, photometric_prob: float = 0.5,
                 photometric_variant: str = "minissd", crop_variant: str = "minissd",
                 resize_variant: str = "minissd"):
        if int(size) != size or size < 1:
            raise ValueError(f"size: expected a positive integer, got {size!r}")
        if not expand_ratio >= 1.0:
            raise ValueError(f"expand_ratio: expected >= 1, got {expand_ratio}")
        if not 0 < crop_min_scale <= crop_max_scale <= 1:
            raise ValueError(f"crop_min_scale, crop_max_scale: need 0 < min <= max <= 1, got "
                             f"{crop_min_scale}, {crop_max_scale}")
        if not 0 < crop_aspect[0] <= crop_aspect[1]:
            raise ValueError(f"crop_aspect: expected (min, max) with 0 < min <= max, got {crop_aspect}")
        for name, p in (("expand_prob", expand_prob), ("flip_prob", flip_prob),
                        ("channel_swap_prob", channel_swap_prob), ("photometric_prob", photometric_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        self.photometric_variant = _check_variant(photometric_variant, "photometric_variant")
        self.crop_variant = _check_variant(crop_variant, "crop_variant")
        self.resize_variant = _check_variant(resize_variant, "resize_variant")
        self.size = int(size)
        self.mean, self.std, self.inv_std = _mean_std(mean, std)
        self.fill = np.clip(np.round(self.mean), 0, 255).astype(np.uint8)
        self.photometric, self.expand, self.crop, self.flip = bool(photometric), bool(expand), bool(crop), bool(flip)
        self.expand_ratio, self.expand_prob = float(expand_ratio), float(expand_prob)
        self.crop_min_scale, self.crop_max_scale = float(crop_min_scale), float(crop_max_scale)
        self.crop_aspect = (float(crop_aspect[0]), float(crop_aspect[1]))
        self.crop_min_ious = tuple(crop_min_ious)
        self.crop_max_trials = int(crop_max_trials)
        self.flip_prob = float(flip_prob)
        self.photometric_options = dict(brightness_delta=brightness_delta, contrast_range=contrast_range,
                                        saturation_range=saturation_range, hue_delta=hue_delta,
                                        channel_swap_prob=channel_swap_prob, prob=photometric_prob,
                                        variant=photometric_variant)

    def __repr__(self) -> str:
        steps = [n for n in ("photometric", "expand", "crop", "flip") if getattr(self, n)]
        caffe = [n for n in ("photometric", "crop", "resize") if getattr(self, f"{n}_variant") == "caffe"]
        return f"TrainTransform(size={self.size}, steps={steps}" + (f", caffe={caffe})" if caffe else ")")

    def __call__(self, image, boxes_px, labels, rng):
        image, boxes, labels = check_inputs(image, boxes_px, labels)
        height, width = image.shape[:2]
        # 1. Photometric distortion. Every step is per pixel, so it is applied to the resized source
        # piece inside render() (same result up to interpolation rounding, and it costs the output's
        # size, not the source's: 3x less on a VOC image). Its random numbers are drawn here, first,
        # as in Caffe's order.
        distort = None
        if self.photometric:
            distort = _Distortion(rng, **self.photometric_options)
        # 2. Zoom out: integer offset on a canvas expand_ratio times larger (Caffe ExpandImage).
        ox = oy = 0
        canvas_w, canvas_h = width, height
        if self.expand and self.expand_ratio > 1 and rng.random() < self.expand_prob:
            ratio = rng.uniform(1.0, self.expand_ratio)
            canvas_w, canvas_h = int(width * ratio), int(height * ratio)
            ox = int(np.floor(rng.random() * (canvas_w - width)))
            oy = int(np.floor(rng.random() * (canvas_h - height)))
        boxes_c = boxes + np.array([ox, oy, ox, oy], np.float32)  # canvas pixels
        # 3. Crop.
        patch = (0.0, 0.0, float(canvas_w), float(canvas_h))
        if self.crop:
            patch = sample_crop(boxes_c, canvas_w, canvas_h, rng, self.crop_min_ious, self.crop_min_scale,
                                self.crop_max_scale, self.crop_aspect, self.crop_max_trials,
                                require_centre=self.crop_variant == "minissd")
        px1, py1, px2, py2 = patch
        cx = 0.5 * (boxes_c[:, 0] + boxes_c[:, 2])
        cy = 0.5 * (boxes_c[:, 1] + boxes_c[:, 3])
        keep = np.flatnonzero((cx >= px1) & (cx <= px2) & (cy >= py1) & (cy <= py2))
        kept = boxes_c[keep]
        scale = np.array([px2 - px1, py2 - py1, px2 - px1, py2 - py1], np.float32)
        out_boxes = (kept - np.array([px1, py1, px1, py1], np.float32)) / scale
        np.clip(out_boxes, 0.0, 1.0, out=out_boxes)
        out_labels = labels[keep]
        # 4 + 5. Render through the composed map, flip, normalise.
        resample = Image.BILINEAR
        if self.resize_variant == "caffe":   # one of Caffe's five interpolation modes, per image
            resample = CAFFE_RESIZE_FILTERS[int(rng.integers(len(CAFFE_RESIZE_FILTERS)))]
        out = render(image, self.size, self.fill, (ox, oy), (canvas_w, canvas_h), patch, distort, resample)
        if self.flip and rng.random() < self.flip_prob:
            out = out[:, ::-1]
            out_boxes = np.stack([1.0 - out_boxes[:, 2], out_boxes[:, 1], 1.0 - out_boxes[:, 0], out_boxes[:, 3]],
                                 1).astype(np.float32)
        return normalize_chw(out, self.mean, self.inv_std), out_boxes.astype(np.float32), out_labels


class EvalTransform:
    """Resize to ``size`` x ``size`` and normalise; boxes are divided by the image size.

    ``__call__(image, boxes_px, labels, rng=None) -> (chw (3, S, S) float32, boxes (G, 4) normalised
    xyxy, labels (G,))``: nothing random, no object dropped.
    """

    def __init__(self, size: int, mean=VGG_MEAN, std=UNIT_STD):
        if int(size) != size or size < 1:
            raise ValueError(f"size: expected a positive integer, got {size!r}")
        self.size = int(size)
        self.mean, self.std, self.inv_std = _mean_std(mean, std)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"

    def __call__(self, image, boxes_px, labels, rng=None):
        image, boxes, labels = check_inputs(image, boxes_px, labels)
        height, width = image.shape[:2]
        if (height, width) == (self.size, self.size):
            out = image
        else:
            out = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))
        norm = boxes / np.array([width, height, width, height], np.float32)
        return normalize_chw(out, self.mean, self.inv_std), np.clip(norm, 0.0, 1.0), labels


def preprocess(image, size: int, mean=VGG_MEAN, std=UNIT_STD) -> np.ndarray:
    """Inference input: (H, W, 3) uint8 -> (3, size, size) float32, as EvalTransform does."""
    chw, _, _ = EvalTransform(size, mean, std)(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    return chw

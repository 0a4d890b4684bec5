"""Reading an image file as (H, W, 3) uint8 RGB: one function for every dataset and for detect.

``Image.open(path).convert("RGB")`` is wrong for several modes a user meets: it saturates 16-bit
grayscale (``I;16``, a 16-bit PNG) to all-white, clips 32-bit integer and float images, and drops
transparency without saying what it shows. `read_image` states a rule for each mode instead:

========================  ==============================================================================
mode                      rule
========================  ==============================================================================
RGB                       as stored
L, 1                      gray value repeated in R, G and B (mode 1: 0 or 255)
P (palette)               the palette's colours; with a transparent index, like RGBA
RGBA, LA, PA, RGBa, La    composited over a white background (what a viewer on a white page shows):
                          ``out = round(c * a / 255 + 255 * (1 - a / 255))``, premultiplied modes
                          un-premultiplied first; the colour under a fully transparent pixel is ignored
CMYK, YCbCr, HSV, RGBX    Pillow's conversion to RGB (CMYK without colour management)
I;16, I;16L, I;16B, I;16N 16-bit unsigned gray: 0..65535 scaled to 0..255, ``round(v / 257)`` (so
                          65535 -> 255 and 257 k -> k exactly)
I                         32-bit signed gray. Pillow opens 16-bit PGM/PPM and some 16-bit TIFF/PNG files
                          as mode I, so values in 0..65535 are taken as 16-bit data and scaled like
                          I;16; a value outside that range is refused (its range is not known)
F                         32-bit float gray in 0..1 (the usual range of float images): ``round(255 v)``;
                          a value outside [0, 1] or not finite is refused
anything else (LAB, ...)  refused
========================  ==============================================================================

Nothing is saturated in silence: an image either reads by the rule of its mode or raises `DataError`
(a ValueError) naming the file and the mode. A missing, truncated or corrupt file raises `DataError`
naming the file and Pillow's reason. EXIF orientation is not applied: boxes in VOC and COCO annotations
refer to the pixels as stored. A multi-frame file (GIF, TIFF) gives its first frame.

`DataError` is the one exception type for "this sample cannot be read"; the datasets raise it from
``get(i)``, so a trainer or evaluator can catch exactly that (save its state, or skip and count the
sample: see `minissd.data.skip.SkipUnreadable`).
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

WHITE = 255  # the background that transparent pixels are composited over

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_CONVERTIBLE = ("CMYK", "YCbCr", "HSV", "RGBX")
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class DataError(ValueError):
    """A sample cannot be read: the image file is missing, truncated, corrupt, of a mode that cannot be
    read, or of another size than its annotation says.

    Attributes
    ----------
    path : str, the file.
    reason : str, what is wrong with it.

    ``str(err)`` is ``"{path}: {reason}"``. Picklable (it crosses process-worker boundaries).
    """

    def __init__(self, path, reason: str):
        self.path = os.fspath(path)
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 straight (not premultiplied) RGBA -> (H, W, 3) uint8 over a white background."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    # round((c * a + 255 * (255 - a)) / 255) in integers: adding 127 before // 255 rounds to nearest.
    out = (rgb * alpha + WHITE * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 as round(v / 257); 65535 / 255 = 257 exactly."""
    v = values.astype(np.uint32)
    return ((v + 128) // 257).astype(np.uint8)


def _to_rgb(img: Image.Image, path: str) -> np.ndarray:
    """The pixels of an opened (and loaded) image as (H, W, 3) uint8 by the rule of its mode."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "1"):
        return _gray_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode == "P":
        if "transparency" in img.info:
            return _composite_over_white(np.asarray(img.convert("RGBA"), dtype=np.uint8))
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in _ALPHA_MODES:
        # Pillow un-premultiplies RGBa (to RGBA) and La (to LA; it has no La -> RGBA conversion).
        if mode == "La":
            img = img.convert("LA")
        return _composite_over_white(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode in _CONVERTIBLE:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in _UINT16_MODES:
        # np.asarray honours the byte order of I;16B; the values are 0..65535 whatever the order.
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if mode == "I":
        values = np.asarray(img, dtype=np.int64)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(path, f"image mode I (32-bit integer gray) with values {lo}..{hi}: only 0..65535 "
                                  "(16-bit data) can be read; convert the image to 8 or 16 bits")
        return _gray_to_rgb(_scale_16bit(values))
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError(path, "image mode F (32-bit float gray) has NaN or infinite values")
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise DataError(path, f"image mode F (32-bit float gray) with values {lo:g}..{hi:g}: only 0..1 "
                                  "can be read; convert the image to 8 or 16 bits")
        return _gray_to_rgb(np.rint(values * 255.0).astype(np.uint8))
    raise DataError(path, f"image mode {mode} cannot be read as RGB; convert the image to RGB")


def read_image(path, expected_size=None) -> np.ndarray:
    """The image at ``path`` as (H, W, 3) uint8 RGB, by the rule of its mode (module docstring).

    Parameters
    ----------
    path : str or os.PathLike.
    expected_size : optional (width, height) that the annotation gives; a different size is a DataError.

    Raises
    ------
    DataError (a ValueError) naming the file: missing, not an image, truncated or corrupt, a mode that
    cannot be read (named), or a size that differs from ``expected_size``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, "image file is missing")
    if os.path.isdir(path):
        raise DataError(path, "is a directory, not an image file")
    try:
        with Image.open(path) as img:
            img.load()
            image = _to_rgb(img, path)
    except DataError:
        raise
    except Exception as err:  # Pillow raises several types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise DataError(path, f"cannot read image ({type(err).__name__}: {err})") from err
    if expected_size is not None:
        width, height = expected_size
        if image.shape[1] != width or image.shape[0] != height:
            raise DataError(path, f"image is {image.shape[1]}x{image.shape[0]} but its annotation says "
                                  f"{width}x{height}")
    image = np.ascontiguousarray(image)
    return image if image.flags.writeable else image.copy()  # Pillow's buffers are read-only


def image_size(path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels; DataError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, "image file is missing")
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as err:
        raise DataError(path, f"cannot read image ({type(err).__name__}: {err})") from err

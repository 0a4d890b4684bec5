"""What the VOC and COCO readers share: box validation with a per-dataset summary, image loading.

A box can be wrong in four ways -- not finite, inverted (x2 < x1 or y2 < y1), zero area (x2 == x1
or y2 == y1), or (partly) outside the image. ``on_bad_box`` chooses what happens:

* ``"drop"`` (default): the object is left out;
* ``"clip"``: a box that pokes out of the image is clipped to it (dropped if nothing is left);
  boxes that no clipping can mend (inverted, zero area, not finite) are dropped;
* ``"error"``: ValueError naming the file and the object.

Dropped and clipped boxes are counted, and each dataset emits one `BadDataWarning` that sums them up
when it has read its annotations. Whole-file problems (a missing or unreadable image, malformed XML or
JSON, an unknown class name) are errors that name the file, and the line or object where known.
An image that cannot be read when a sample is fetched raises `DataError` (a ValueError carrying the
path), so that training and evaluation can tell it from other errors (see minissd/data/skip.py).
"""
from __future__ import annotations

import collections
import math
import os
import warnings

from ..imageio import DataError, image_size, read_image  # noqa: F401  (re-exported for the readers)

BAD_BOX_MODES = ("drop", "clip", "error")
UNKNOWN_CLASS_MODES = ("error", "drop")
TRAIN_SPLITS = ("train", "trainval")


class BadDataWarning(UserWarning):
    """Annotations were dropped or clipped while reading a dataset."""


def check_mode(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


class BoxChecker:
    """Validate boxes against their image and tally what was dropped or clipped.

    ``check(box, width, height, where)`` returns the (possibly clipped) box as a 4-tuple of floats, or
    None when the object is to be dropped; ``where`` names the file and object for error messages.
    ``warn_summary()`` emits one BadDataWarning if anything was dropped or clipped.
    """

    def __init__(self, dataset: str, on_bad_box: str = "drop"):
        self.dataset = dataset
        self.on_bad_box = check_mode(on_bad_box, BAD_BOX_MODES, "on_bad_box")
        self.dropped = collections.Counter()
        self.clipped = 0
        self.unknown = collections.Counter()  # dropped objects of classes not in class_names
        self.examples = []

    @staticmethod
    def problem(box, width, height):
        x1, y1, x2, y2 = box
        if not all(math.isfinite(v) for v in box):
            return "not finite"
        if x2 < x1 or y2 < y1:
            return "inverted"
        if x2 == x1 or y2 == y1:
            return "zero area"
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            return "outside the image"
        return None

    def check(self, box, width, height, where):
        box = tuple(float(v) for v in box)
        problem = self.problem(box, width, height)
        if problem is None:
            return box
        if self.on_bad_box == "error":
            raise ValueError(f"{where}: box (x1, y1, x2, y2) = {box} is {problem} (image {width}x{height}); "
                             "pass on_bad_box='drop' or 'clip' to skip or mend such boxes")
        if len(self.examples) < 3:
            self.examples.append(f"{where}: {problem}")
        if self.on_bad_box == "clip" and problem == "outside the image":
            x1, y1, x2, y2 = box
            clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                       min(max(x2, 0.0), width), min(max(y2, 0.0), height))
            if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                self.clipped += 1
                return clipped
            problem = "entirely outside the image"
        self.dropped[problem] += 1
        return None

    def drop_unknown(self, name, where):
        self.unknown[name] += 1
        if len(self.examples) < 3:
            self.examples.append(f"{where}: unknown class {name!r}")

    def warn_summary(self, stacklevel: int = 3):
        parts = []
        n_dropped = sum(self.dropped.values())
        if n_dropped:
            detail = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()))
            parts.append(f"dropped {n_dropped} bad boxes ({detail})")
        if self.clipped:
            parts.append(f"clipped {self.clipped} boxes to the image")
        if self.unknown:
            detail = ", ".join(f"{n} {name!r}" for name, n in sorted(self.unknown.items()))
            parts.append(f"dropped {sum(self.unknown.values())} objects of classes not in class_names ({detail})")
        if parts:
            examples = "; e.g. " + "; ".join(self.examples) if self.examples else ""
            hint = " (on_bad_box='error' raises instead)" if n_dropped or self.clipped else ""
            warnings.warn(f"{self.dataset}: " + "; ".join(parts) + examples + hint, BadDataWarning,
                          stacklevel=stacklevel)

    def summary(self) -> dict:
        return {"dropped": dict(self.dropped), "clipped": self.clipped, "unknown_class": dict(self.unknown)}


# The one image reader (every mode by a stated rule, DataError naming the file): minissd/imageio.py.
load_image = read_image


def check_missing(paths, what: str):
    """ValueError listing (some of) the files of ``paths`` that do not exist."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{what}: {len(missing)} image file(s) missing: {shown}")

"""The record every dataset returns: one image and its objects, in pixels."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Sample(NamedTuple):
    """One image and its ground truth, at the dataset's edge (pixels, not normalised).

    Attributes
    ----------
    image : (H, W, 3) uint8, RGB.
    boxes : (G, 4) float32, pixel ``xyxy`` in continuous coordinates: pixel (r, c) covers
        [c, c + 1) x [r, r + 1), so a box over the whole image is (0, 0, W, H).
    labels : (G,) int64 in 1..C (``class_names[label - 1]``); 0 is reserved for background.
    difficult : (G,) bool; VOC ``difficult`` or COCO ``iscrowd``. Evaluation counts such an object
        neither as a hit nor as a miss.
    image_id : str, the name of the image in its dataset (file stem for VOC, id for COCO).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    image_id: str


def empty_targets():
    """(boxes (0, 4) float32, labels (0,) int64, difficult (0,) bool): an image without objects."""
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), bool)

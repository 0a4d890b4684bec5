"""Data: the built-in ``shapes`` dataset, Pascal VOC and COCO readers, the SSD augmentation, the loader.

    dataset.get(i) -> Sample (pixels)  ->  transform(image, boxes, labels, rng)  ->  DataLoader batches

`open_dataset(spec, split)` turns a command-line string into a dataset:

    "shapes"                        the built-in synthetic dataset (ShapesDataset)
    "voc:PATH[:SPLIT]"              Pascal VOC layout under PATH (VOCDataset); SPLIT overrides ``split``
    "coco:ANNOTATIONS:IMAGES"       COCO instances json + image directory (COCODataset)

Walkthroughs: docs/06-data-augmentation.md, docs/10-datasets.md
"""
from __future__ import annotations

import os

from .annotations import TRAIN_SPLITS, BadDataWarning
from .coco import COCODataset
from .loader import Batch, DataLoader
from .sample import Sample
from .skip import DataError, SkipUnreadable, is_placeholder
from .transforms import EvalTransform, TrainTransform, preprocess
from .voc import VOC_CLASSES, VOCDataset

# `shapes` is imported on first use (PEP 562), so that `python -m minissd.data.shapes` does not find
# the module already imported by its own package (runpy warns about that).
def __getattr__(name):
    if name == "ShapesDataset":
        from .shapes import ShapesDataset

        return ShapesDataset
    raise AttributeError(f"module 'minissd.data' has no attribute {name!r}")


__all__ = ["Sample", "ShapesDataset", "VOCDataset", "COCODataset", "open_dataset", "TrainTransform",
           "EvalTransform", "preprocess", "DataLoader", "Batch", "BadDataWarning", "VOC_CLASSES",
           "DataError", "SkipUnreadable", "is_placeholder"]


def open_dataset(spec: str, split: str = "train", **options):
    """The dataset named by ``spec`` ("shapes", "voc:PATH[:SPLIT]", "coco:ANNOTATIONS:IMAGES").

    ``split`` picks the shapes split and the VOC image list (a SPLIT in the spec wins). For train
    splits ("train", "trainval") VOC difficult objects and COCO crowd regions are left out, as the
    paper trains; for other splits they are kept with the difficult flag, for evaluation. ``options``
    go to the dataset's constructor (e.g. size=, seed= for shapes; class_names=, on_bad_box=).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"spec: expected 'shapes', 'voc:PATH[:SPLIT]' or 'coco:ANNOTATIONS:IMAGES', got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "shapes":
        if rest:
            raise ValueError(f"spec: 'shapes' takes no path (got {spec!r}); pass size=, seed= as options")
        from .shapes import ShapesDataset

        return ShapesDataset(split, **options)
    if kind == "voc":
        if not rest:
            raise ValueError(f"spec: expected 'voc:PATH[:SPLIT]', got {spec!r}")
        path, voc_split = rest, split
        if not os.path.exists(rest) and ":" in rest:
            path, voc_split = rest.rsplit(":", 1)
        return VOCDataset(path, voc_split, **options)
    if kind == "coco":
        parts = rest.split(":")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"spec: expected 'coco:ANNOTATIONS:IMAGES', got {spec!r}")
        options.setdefault("keep_crowd", split not in TRAIN_SPLITS)
        return COCODataset(parts[0], parts[1], **options)
    raise ValueError(f"spec: unknown dataset kind {kind!r} in {spec!r}; expected shapes, voc:... or coco:...")

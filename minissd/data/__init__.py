"""Data: the built-in ``shapes`` dataset, Pascal VOC and COCO readers, the SSD augmentation, the loader.

    dataset.get(i) -> Sample (pixels)  ->  transform(image, boxes, labels, rng)  ->  DataLoader batches

`open_dataset(spec, split)` turns a command-line string into a dataset (minissd/data/specs.py):

    "shapes"                        the built-in synthetic dataset (ShapesDataset)
    "voc:PATH[:SPLIT]"              Pascal VOC layout under PATH (VOCDataset); SPLIT overrides ``split``
    "coco:ANNOTATIONS:IMAGES"       COCO instances json + image directory (COCODataset)

Walkthroughs: docs/11-augmentation.md, docs/12-datasets-on-disk.md
"""
from __future__ import annotations

from .annotations import BadDataWarning
from .coco import COCODataset
from .loader import Batch, DataLoader
from .sample import Sample
from .skip import DataError, SkipUnreadable, is_placeholder
from .specs import Subset, open_data, open_dataset, parse_dataset_spec
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
           "Subset", "open_data", "parse_dataset_spec", "DataError", "SkipUnreadable", "is_placeholder"]

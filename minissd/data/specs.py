"""Dataset specs: the strings the commands take for data, parsed in one place.

    "shapes[:SPLIT]"                the built-in synthetic dataset
    "voc:PATH[:SPLIT]"              a Pascal VOC directory; SPLIT is an ImageSets/Main list
    "coco:ANNOTATIONS:IMAGES"       a COCO instances json and its image directory

`parse_dataset_spec` splits a spec into its parts and `open_dataset` builds the dataset from them;
`parse_spec`/`open_data` add what the commands need on top: the default split of a role (train,
val, test), a ``--option`` named in every error, and `Subset` for ``--*-limit``.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from .annotations import TRAIN_SPLITS
from .coco import COCODataset
from .voc import VOCDataset

KINDS = ("shapes", "voc", "coco")

# The split a spec without one means, by the role the data plays in a run.
DEFAULT_SPLITS = {"train": {"shapes": "train", "voc": "trainval", "coco": "train"},
                  "val": {"shapes": "val", "voc": "val", "coco": "val"},
                  "test": {"shapes": "test", "voc": "test", "coco": "test"}}


class DatasetSpec(NamedTuple):
    """A parsed spec: ``kind`` (shapes, voc, coco), ``path`` (VOC root or COCO annotations json),
    ``images`` (COCO image directory) and ``split`` (the split written in the spec, else None)."""

    kind: str
    path: str | None
    images: str | None
    split: str | None


def spec_kind(spec) -> str:
    """The kind of a spec (the text before the first ':'); ValueError for anything but shapes/voc/coco."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec must be 'shapes', 'voc:PATH[:SPLIT]' or 'coco:ANN:IMAGES', got {spec!r}")
    kind = spec.partition(":")[0]
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r} in {spec!r}; expected shapes, voc:PATH[:SPLIT] or "
                         "coco:ANNOTATIONS:IMAGES")
    return kind


def parse_dataset_spec(spec) -> DatasetSpec:
    """Split a spec into its parts (see the module docstring); ValueError names what is malformed.

    A VOC path may itself hold ':' (a Windows drive): the last ':' only separates a SPLIT when the
    whole text after 'voc:' is not an existing path.
    """
    kind = spec_kind(spec)
    rest = spec.partition(":")[2]
    if kind == "shapes":
        return DatasetSpec("shapes", None, None, rest or None)
    if kind == "voc":
        if not rest:
            raise ValueError(f"expected 'voc:PATH[:SPLIT]', got {spec!r}")
        path, split = rest, None
        if not os.path.exists(rest) and ":" in rest:
            path, split = rest.rsplit(":", 1)
        return DatasetSpec("voc", path, None, split)
    parts = rest.split(":")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected 'coco:ANNOTATIONS:IMAGES', got {spec!r}")
    return DatasetSpec("coco", parts[0], parts[1], None)


def with_split(spec: str, split: str) -> str:
    """``spec`` with its split replaced by ``split`` (shapes and VOC; COCO specs have no split)."""
    s = parse_dataset_spec(spec)
    if s.kind == "shapes":
        return f"shapes:{split}"
    if s.kind == "voc":
        return f"voc:{s.path}:{split}"
    raise ValueError(f"--split does not apply to {s.kind}: datasets (choose the annotation file instead)")


def open_dataset(spec: str, split: str = "train", **options):
    """The dataset named by ``spec`` ("shapes", "voc:PATH[:SPLIT]", "coco:ANNOTATIONS:IMAGES").

    ``split`` picks the shapes split and the VOC image list (a SPLIT in the spec wins). For train
    splits ("train", "trainval") VOC difficult objects and COCO crowd regions are left out (the
    authors' Caffe code trains on difficult objects; docs/14-differences.md); for other splits they
    are kept with the difficult flag, for evaluation. ``options``
    go to the dataset's constructor (e.g. size=, seed= for shapes; class_names=, on_bad_box=).
    """
    try:
        s = parse_dataset_spec(spec)
    except ValueError as err:
        raise ValueError(f"spec: {err}") from None
    if s.kind == "shapes":
        if s.split:
            raise ValueError(f"spec: 'shapes' takes no path (got {spec!r}); pass size=, seed= as options")
        # imported on first use, so that `python -m minissd.data.shapes` does not find the module
        # already imported by its own package (runpy warns about that)
        from .shapes import ShapesDataset

        return ShapesDataset(split, **options)
    if s.kind == "voc":
        return VOCDataset(s.path, s.split or split, **options)
    options.setdefault("keep_crowd", split not in TRAIN_SPLITS)
    return COCODataset(s.path, s.images, **options)


def parse_spec(spec: str, role: str = "train") -> tuple[str, str]:
    """``(open_dataset spec, split)`` for a command-line spec used in ``role`` (train, val, test).

    'shapes[:SPLIT]' -> ('shapes', SPLIT or the role's split); 'voc:PATH[:SPLIT]' keeps its SPLIT
    (default: trainval for training, else the role's split); 'coco:ANN:IMAGES' as is (the split
    only decides whether crowd regions are kept).
    """
    kind = spec_kind(spec)
    split = DEFAULT_SPLITS[role][kind]
    if kind == "shapes":
        return "shapes", (spec.partition(":")[2] or split)
    return spec, split


def split_spec(spec: str, split: str):
    """The spec of ``split`` of the dataset ``spec`` ('shapes' -> 'shapes:val'), or None if unknown."""
    if spec == "shapes" or spec.startswith("shapes:"):
        return f"shapes:{split}"
    return None


def open_data(spec, limit=None, role="train", option="--dataset", **options):
    """Open a command-line dataset spec (see `parse_spec`), optionally its first ``limit`` images.

    ``options`` go to `open_dataset` (e.g. keep_difficult=True). Errors name the option:
    ``--dataset 'voc:x': ...``.
    """
    try:
        name, split = parse_spec(spec, role)
        ds = open_dataset(name, split, **options)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{option} {spec!r}: {err}") from err
    if limit:
        ds = Subset(ds, range(min(int(limit), len(ds))))
    return ds


class Subset:
    """The images ``indices`` of a dataset, as a dataset (class_names, __len__, get)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        n = len(dataset)
        for i in self.indices:
            if not 0 <= i < n:
                raise ValueError(f"Subset: index {i} is outside the dataset's {n} images")
        self.class_names = dataset.class_names

    def __len__(self):
        return len(self.indices)

    def get(self, i):
        return self.dataset.get(self.indices[i])

    def __getattr__(self, name):  # anything else (e.g. name, root) comes from the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

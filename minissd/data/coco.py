"""COCO reader: an ``instances_*.json`` annotation file and a directory of images.

Categories are sorted by id and numbered 1..C (COCO's ids have gaps: 1..90 for 80 classes); the
``label_to_category`` list maps back for writing results. COCO boxes are [x, y, width, height] in
continuous 0-based pixels, so xyxy is (x, y, x + width, y + height) with no +-1. ``iscrowd`` regions
are kept as the ``difficult`` flag (evaluation ignores them) unless ``keep_crowd=False``, the setting
for training (`open_dataset` uses it for the train splits).

Walkthrough: docs/12-datasets-on-disk.md
"""
from __future__ import annotations

import json
import os

import numpy as np

from .annotations import UNKNOWN_CLASS_MODES, BoxChecker, check_missing, check_mode, load_image
from .sample import Sample, empty_targets


def load_json(path: str):
    """Read a JSON file; ValueError naming the file, line and column when it is malformed."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: annotation file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read annotation file ({err})") from err


class COCODataset:
    """A COCO-style detection dataset.

    Parameters
    ----------
    annotations : path of the instances json (images, annotations, categories).
    images : directory that holds the images' ``file_name``.
    class_names : optional subset/order of category names (label i + 1 = class_names[i]); default: all
        categories, sorted by id.
    keep_crowd : keep ``iscrowd`` objects with the difficult flag (default True; False for training).
    on_bad_box : "drop" (default, counted in one warning), "clip" or "error".
    on_unknown_class : "error" (default) or "drop", for annotations whose category is not in
        ``class_names``. A category_id missing from the file's own categories is always an error.
    check_images : check at construction that every image file exists.

    Attributes
    ----------
    class_names : the C class names; ``label_to_category`` : [None, category id of label 1, ...].
    image_ids : the file's image id of each sample, as the file writes it (``Sample.image_id`` is its
        string); with ``annotations`` and ``label_to_category`` this is what
        `minissd.metrics.coco_evaluate_file` needs for the official COCO numbers.
    """

    def __init__(self, annotations: str, images: str, class_names=None, keep_crowd: bool = True,
                 on_bad_box: str = "drop", on_unknown_class: str = "error", check_images: bool = True):
        self.annotations = os.fspath(annotations)
        self.images_dir = os.fspath(images)
        check_mode(on_unknown_class, UNKNOWN_CLASS_MODES, "on_unknown_class")
        if not os.path.isdir(self.images_dir):
            raise ValueError(f"images: {self.images_dir!r} is not a directory")
        data = load_json(self.annotations)
        path = self.annotations
        if not isinstance(data, dict) or "images" not in data or "categories" not in data:
            raise ValueError(f"{path}: expected a COCO instances object with 'images' and 'categories'")
        # Categories -> contiguous labels 1..C.
        categories = {}
        for k, cat in enumerate(data["categories"]):
            try:
                categories[int(cat["id"])] = str(cat["name"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: categories[{k}] needs an integer 'id' and a 'name' ({err!r})") from err
        by_name = {name: cid for cid, name in categories.items()}
        if class_names is None:
            ordered = sorted(categories)
        else:
            unknown = [n for n in class_names if n not in by_name]
            if unknown:
                raise ValueError(f"class_names: {unknown} are not categories of {path} "
                                 f"(it has {sorted(by_name)})")
            ordered = [by_name[n] for n in class_names]
        self.class_names = tuple(categories[cid] for cid in ordered)
        self.label_to_category = [None] + ordered  # label -> COCO category id
        cat_to_label = {cid: i + 1 for i, cid in enumerate(ordered)}
        self.keep_crowd = bool(keep_crowd)
        self.checker = BoxChecker(f"COCODataset({path!r})", on_bad_box)

        self.records, by_id = [], {}
        self.image_ids = []
        for k, img in enumerate(data["images"]):
            try:
                image_id, file_name = img["id"], str(img["file_name"])
                width, height = int(img["width"]), int(img["height"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: images[{k}] needs 'id', 'file_name', 'width', 'height' ({err!r})") from err
            if image_id in by_id:
                raise ValueError(f"{path}: images[{k}] repeats image id {image_id!r}")
            record = {"id": str(image_id), "path": os.path.join(self.images_dir, file_name),
                      "size": (width, height), "objects": []}
            by_id[image_id] = record
            self.records.append(record)
            self.image_ids.append(image_id)
        if not self.records:
            raise ValueError(f"COCODataset({path!r}) has no images: its 'images' list is empty")

        for k, ann in enumerate(data.get("annotations", [])):
            where = f"{path}, annotations[{k}] (id {ann.get('id') if isinstance(ann, dict) else None!r})"
            try:
                image_id, category = ann["image_id"], int(ann["category_id"])
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{where}: needs 'image_id', 'category_id' and a 4-number 'bbox' ({err!r})") from err
            if image_id not in by_id:
                raise ValueError(f"{where}: image_id {image_id!r} is not in 'images'")
            if category not in cat_to_label:
                if category not in categories:
                    raise ValueError(f"{where}: category_id {category} is not in 'categories'")
                name = categories[category]
                if on_unknown_class == "error":
                    raise ValueError(f"{where}: category {name!r} is not in class_names "
                                     "(pass on_unknown_class='drop' to skip it)")
                self.checker.drop_unknown(name, where)
                continue
            crowd = bool(ann.get("iscrowd", 0))
            if crowd and not self.keep_crowd:
                continue
            record = by_id[image_id]
            box = self.checker.check((x, y, x + w, y + h), *record["size"], where)
            if box is not None:
                record["objects"].append((box, cat_to_label[category], crowd))
        for record in self.records:
            objects = record.pop("objects")
            if objects:
                record["targets"] = (np.asarray([o[0] for o in objects], np.float32),
                                     np.asarray([o[1] for o in objects], np.int64),
                                     np.asarray([o[2] for o in objects], bool))
            else:
                record["targets"] = empty_targets()
        if check_images:
            check_missing([r["path"] for r in self.records], f"COCODataset({path!r})")
        self.checker.warn_summary()

    def __repr__(self) -> str:
        return f"COCODataset({self.annotations!r}, {len(self)} images, {len(self.class_names)} classes)"

    def __len__(self) -> int:
        return len(self.records)

    def get(self, i: int) -> Sample:
        record = self.records[i]
        image = load_image(record["path"], record["size"])
        boxes, labels, crowd = record["targets"]
        return Sample(image, boxes.copy(), labels.copy(), crowd.copy(), record["id"])

    __getitem__ = get

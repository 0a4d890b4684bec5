"""Pascal VOC reader: VOCdevkit/VOC20xx with Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/*.txt.

Coordinates. The devkit numbers pixels from 1 and a box ``<xmin>..<xmax>`` includes both end pixels
(the devkit's own evaluation computes widths as ``xmax - xmin + 1``). minissd uses continuous 0-based
coordinates where pixel c covers [c, c + 1), so a VOC box becomes

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax

which covers exactly the same pixels; a box over a whole W x H image is (0, 0, W, H). (Writers do the
inverse: `minissd.data.shapes` writes xmin = round(x1) + 1, xmax = round(x2).)

``difficult`` objects are kept with their flag for evaluation (neither hit nor miss) and left out of
training splits by default (``keep_difficult=None`` means: drop them for "train" and "trainval").

Walkthrough: docs/12-datasets-on-disk.md
"""
from __future__ import annotations

import glob
import os
import xml.parsers.expat

import numpy as np

from .annotations import (
    TRAIN_SPLITS,
    UNKNOWN_CLASS_MODES,
    BoxChecker,
    check_missing,
    check_mode,
    image_size,
    load_image,
)
from .sample import Sample, empty_targets

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
CLASSES_FILE = "classes.txt"


class _Node:
    """A tiny XML element with the line it starts on (ElementTree does not keep line numbers)."""

    __slots__ = ("tag", "line", "children", "text")

    def __init__(self, tag, line):
        self.tag, self.line, self.children, self.text = tag, line, [], ""

    def find(self, tag):
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def findtext(self, tag, default=None):
        node = self.find(tag)
        return default if node is None else node.text.strip()

    def findall(self, tag):
        return [c for c in self.children if c.tag == tag]


def parse_xml(path: str) -> _Node:
    """Parse an XML file into _Node's; ValueError naming the file, line and column when malformed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"{path}: cannot read annotation ({err})") from err
    parser = xml.parsers.expat.ParserCreate()
    stack, root = [], []

    def start(tag, attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(tag):
        stack.pop()

    def chars(text):
        if stack:
            stack[-1].text += text

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, chars
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as err:
        raise ValueError(f"{path}: malformed XML at line {err.lineno}, column {err.offset + 1}: "
                         f"{xml.parsers.expat.ErrorString(err.code)}") from err
    return root[0]


def find_voc_root(root: str, year=None) -> str:
    """The VOC20xx directory (the one holding Annotations/) for ``root``, which may be that directory,
    a VOCdevkit directory, or the directory that holds VOCdevkit."""
    if not os.path.isdir(root):
        raise ValueError(f"root: {root!r} is not a directory")
    if os.path.isdir(os.path.join(root, "Annotations")):
        return root
    base = os.path.join(root, "VOCdevkit") if os.path.isdir(os.path.join(root, "VOCdevkit")) else root
    if year is not None:
        path = os.path.join(base, f"VOC{year}")
        if not os.path.isdir(os.path.join(path, "Annotations")):
            raise ValueError(f"root: no {path}/Annotations")
        return path
    found = sorted(d for d in glob.glob(os.path.join(base, "VOC*")) if os.path.isdir(os.path.join(d, "Annotations")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"root: {root!r} has no Annotations/ directory, nor VOCdevkit/VOC20xx/Annotations")
    raise ValueError(f"root: {root!r} holds several VOC datasets ({', '.join(os.path.basename(f) for f in found)}); "
                     "pass year=")


def read_text_lines(path: str, what: str) -> list[str]:
    """The lines of a UTF-8 text file; ValueError naming the file when it cannot be read or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"{path}: cannot read {what} ({err.strerror or err})") from err
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is not part of an id
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}: {what} must be UTF-8 text; byte {data[err.start]:#04x} on line {line} "
                         "is not") from err
    return text.splitlines()


def read_class_names(path: str):
    """One class name per line (blank lines and '#' comments ignored)."""
    names = [line.split("#", 1)[0].strip() for line in read_text_lines(path, "a class-name file")]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return tuple(names)


class VOCDataset:
    """A Pascal VOC dataset (or anything in its layout).

    Parameters
    ----------
    root : the VOC20xx directory, a VOCdevkit directory, or the directory holding VOCdevkit.
    split : the image list ImageSets/Main/<split>.txt ("train", "val", "trainval", "test").
    year : picks VOC<year> when the root holds several.
    class_names : sequence of names (label i + 1 = class_names[i]), or a path to a file of names;
        default: the dataset's classes.txt if it has one, otherwise the 20 VOC classes.
    keep_difficult : keep ``difficult`` objects (flagged); None: False for train/trainval, else True.
    on_bad_box : "drop" (default, counted in one warning), "clip" or "error"; see annotations.py.
    on_unknown_class : "error" (default) or "drop" for objects whose name is not in class_names.
    check_images : check at construction that every image file exists (cheap; decoding errors
        surface in get()).

    Annotations are read at construction (errors name the file, line and object); images are
    decoded in ``get(i)``.
    """

    def __init__(self, root: str, split: str = "trainval", year=None, class_names=None, keep_difficult=None,
                 on_bad_box: str = "drop", on_unknown_class: str = "error", check_images: bool = True):
        self.root = find_voc_root(os.fspath(root), year)
        self.split = split
        check_mode(on_unknown_class, UNKNOWN_CLASS_MODES, "on_unknown_class")
        if class_names is None:
            own = os.path.join(self.root, CLASSES_FILE)
            class_names = read_class_names(own) if os.path.exists(own) else VOC_CLASSES
        elif isinstance(class_names, (str, os.PathLike)):
            class_names = read_class_names(os.fspath(class_names))
        self.class_names = tuple(class_names)
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names: expected distinct names, got {class_names!r}")
        self.keep_difficult = (split not in TRAIN_SPLITS) if keep_difficult is None else bool(keep_difficult)
        list_path = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.exists(list_path):
            raise ValueError(f"split: {list_path} does not exist")
        # Class-specific lists hold "id flag" per line; the id is the first token.
        self.ids = [line.split()[0] for line in read_text_lines(list_path, "an image list") if line.strip()]
        if not self.ids:
            raise ValueError(f"split {split!r} of VOCDataset({self.root!r}) has no images: {list_path} lists none")
        self.checker = BoxChecker(f"VOCDataset({self.root!r}, {split!r})", on_bad_box)
        self._index = {name: i + 1 for i, name in enumerate(self.class_names)}
        self._on_unknown_class = on_unknown_class
        self.records = [self._read(image_id) for image_id in self.ids]
        if check_images:
            check_missing([r["path"] for r in self.records], f"VOCDataset({self.root!r}, {split!r})")
        self.checker.warn_summary()

    def __repr__(self) -> str:
        return f"VOCDataset({self.root!r}, {self.split!r}, {len(self)} images, {len(self.class_names)} classes)"

    def __len__(self) -> int:
        return len(self.records)

    def _image_path(self, image_id: str, filename):
        path = os.path.join(self.root, "JPEGImages", image_id + ".jpg")
        if not os.path.exists(path) and filename:
            alternative = os.path.join(self.root, "JPEGImages", os.path.basename(filename))
            if os.path.exists(alternative):
                return alternative
        return path

    def _read(self, image_id: str) -> dict:
        xml_path = os.path.join(self.root, "Annotations", image_id + ".xml")
        if not os.path.exists(xml_path):
            raise ValueError(f"{xml_path}: annotation file is missing (listed in ImageSets/Main/{self.split}.txt)")
        tree = parse_xml(xml_path)
        if tree.tag != "annotation":
            raise ValueError(f"{xml_path}, line {tree.line}: expected <annotation>, got <{tree.tag}>")
        path = self._image_path(image_id, tree.findtext("filename"))
        size = tree.find("size")
        try:
            width, height = int(size.findtext("width")), int(size.findtext("height"))
            if width <= 0 or height <= 0:
                raise ValueError
        except (AttributeError, TypeError, ValueError):
            # Some hand-made sets omit <size> or write 0: read it from the image header instead.
            width, height = image_size(path)
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(tree.findall("object")):
            name = obj.findtext("name")
            where = f"{xml_path}, line {obj.line}, object #{k} ({name!r})"
            if not name:
                raise ValueError(f"{where}: <object> without a <name>")
            if name not in self._index:
                if self._on_unknown_class == "error":
                    raise ValueError(f"{where}: unknown class name {name!r}; class_names are {list(self.class_names)} "
                                     f"(list every class, one per line, in {os.path.join(self.root, CLASSES_FILE)}; "
                                     "from Python: class_names=... or on_unknown_class='drop')")
                self.checker.drop_unknown(name, where)
                continue
            is_difficult = obj.findtext("difficult", "0") not in ("0", "")
            if is_difficult and not self.keep_difficult:
                continue
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise ValueError(f"{where}: <object> without a <bndbox>")
            try:
                xmin, ymin, xmax, ymax = (float(bndbox.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax ({err})") from err
            # 1-based inclusive pixels -> 0-based continuous: see the module docstring.
            box = self.checker.check((xmin - 1.0, ymin - 1.0, xmax, ymax), width, height, where)
            if box is None:
                continue
            boxes.append(box)
            labels.append(self._index[name])
            difficult.append(is_difficult)
        if boxes:
            targets = (np.asarray(boxes, np.float32), np.asarray(labels, np.int64), np.asarray(difficult, bool))
        else:
            targets = empty_targets()  # an image without objects is a valid sample
        return {"id": image_id, "path": path, "size": (width, height), "targets": targets}

    def get(self, i: int) -> Sample:
        record = self.records[i]
        image = load_image(record["path"], record["size"])
        boxes, labels, difficult = record["targets"]
        return Sample(image, boxes.copy(), labels.copy(), difficult.copy(), record["id"])

    __getitem__ = get

"""`shapes`: the built-in detection dataset, drawn on the fly from a seed (no download, no files).

Four classes that differ in shape only -- ``circle``, ``square``, ``triangle``, ``cross`` -- in random
colours (colour never gives the class away), 1 to 6 objects per image, from a tenth of the image side
to most of it, overlapping and occluding each other, on textured and noisy backgrounds. Circles and
squares are defined by their 1:1 aspect; triangles (apex up; ``triangle_orientations=4`` also points
them down, left and right) and crosses are stretched to aspect ratios in [1/2, 2]. Every object lies
fully inside the image and its box is the full extent of the shape, also where another object hides
part of it; an object is never hidden by more than ``max_occlusion`` (default 45 %) of its area, so
every label can be seen.

Image ``i`` of split ``s`` is a pure function of ``numpy.random.default_rng([seed, SPLIT_IDS[s], i])``:
splits never share an image, any image can be drawn alone, and nothing is cached. Drawing is numpy
rasterisation with analytic anti-aliasing (pixel coverage from the signed distance to the edge), made
directly at the model's input size: about 1 ms per 128 px image on one core (benchmarks/RESULTS.md).

    python -m minissd.data.shapes --out DIR --count N [--split train,val,test] [--seed 0] [--size 128]

writes the images in Pascal VOC layout (Annotations/, JPEGImages/, ImageSets/Main/, plus classes.txt),
which `minissd.data.VOCDataset(DIR, split)` reads back.

Walkthrough: docs/12-datasets-on-disk.md
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
from PIL import Image

from ..boxes import iou
from .sample import Sample

CLASS_NAMES = ("circle", "square", "triangle", "cross")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Train is "effectively infinite": far more distinct images than a CPU run sees (about 30k in 8 min).
SPLIT_SIZES = {"train": 50000, "val": 200, "test": 500}

# Which classes take a random aspect ratio (width / height); the others are defined by 1:1.
_STRETCHABLE = {"triangle", "cross"}


class ShapesDataset:
    """The built-in synthetic dataset: images of coloured shapes with their boxes.

    Parameters
    ----------
    split : "train" | "val" | "test".
    size : int, side of the square images in pixels (default 128, the small model's input).
    seed : int, the dataset seed; the same (seed, split, index) always gives the same image.
    count : int or None, number of images (default: 50000 train, 200 val, 500 test).
    min_objects, max_objects : objects per image, drawn uniformly (default 1..6; fewer when the
        occlusion rule rejects a placement).
    min_scale, max_scale : object size sqrt(w h) as a fraction of the image side, log-uniform
        (default 0.1 .. 0.8).
    max_occlusion : largest fraction of an object's area that later objects may hide.
    triangle_orientations : 1 (apex up, default), 2 (up or down) or 4 (also left or right). Four
        orientations make triangles a four-shape class, which a small model learns markedly slower.
    noise : (low, high) standard deviation of the per-pixel noise, in grey levels.

    ``get(i)`` returns a `Sample` with pixel ``xyxy`` float32 boxes and labels in 1..4
    (``class_names[label - 1]``).
    """

    class_names = CLASS_NAMES

    def __init__(self, split: str = "train", size: int = 128, seed: int = 0, count: int | None = None,
                 min_objects: int = 1, max_objects: int = 6, min_scale: float = 0.1,
                 max_scale: float = 0.8, max_occlusion: float = 0.45, noise=(2.0, 10.0),
                 triangle_orientations: int = 1):
        if split not in SPLIT_IDS:
            raise ValueError(f"split: expected one of {sorted(SPLIT_IDS)}, got {split!r}")
        if int(size) != size or size < 16:
            raise ValueError(f"size: expected an integer >= 16, got {size!r}")
        if count is None:
            count = SPLIT_SIZES[split]
        if int(count) != count or count < 0:
            raise ValueError(f"count: expected a non-negative integer, got {count!r}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"min_objects, max_objects: need 1 <= min <= max, got {min_objects}, {max_objects}")
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"min_scale, max_scale: need 0 < min <= max <= 1, got {min_scale}, {max_scale}")
        if not 0 <= max_occlusion < 1:
            raise ValueError(f"max_occlusion: expected a fraction in [0, 1), got {max_occlusion}")
        if triangle_orientations not in (1, 2, 4):
            raise ValueError(f"triangle_orientations: expected 1, 2 or 4, got {triangle_orientations!r}")
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.count = int(count)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.max_occlusion = float(max_occlusion)
        self.noise = (float(noise[0]), float(noise[1]))
        self.triangle_orientations = int(triangle_orientations)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"ShapesDataset(split={self.split!r}, size={self.size}, seed={self.seed}, count={self.count})"

    def image_id(self, i: int) -> str:
        return f"{self.split}_{i:06d}"

    def get(self, i: int) -> Sample:
        """Draw image ``i`` of this split (deterministic)."""
        if not 0 <= i < self.count:
            raise IndexError(f"i: index {i} out of range for {self!r}")
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], int(i)])
        image, boxes, labels = draw_image(rng, self.size, self.min_objects, self.max_objects, self.min_scale,
                                          self.max_scale, self.max_occlusion, self.noise,
                                          triangle_orientations=self.triangle_orientations)
        return Sample(image, boxes, labels, np.zeros(len(labels), bool), self.image_id(i))

    __getitem__ = get


# ---------------------------------------------------------------------------------------------------
# Drawing. Coordinates are continuous pixels: pixel (r, c) covers [c, c+1) x [r, r+1), its centre is
# (c + 0.5, r + 0.5). Each shape gives its coverage alpha in [0, 1] over the pixels of its box; alpha
# comes from the distance d to the edge (alpha = clip(0.5 - d, 0, 1)), a one-pixel-wide ramp that is
# the cheap form of anti-aliasing.

def _span_coverage(lo: float, hi: float, start: int, stop: int) -> np.ndarray:
    """Fraction of each pixel [k, k+1), k in start..stop-1, that lies inside [lo, hi]: (stop-start,)."""
    k = np.arange(start, stop, dtype=np.float32)
    return _clip01(np.minimum(k + 1.0, hi) - np.maximum(k, lo))


def _clip01(a: np.ndarray) -> np.ndarray:
    """In-place clip to [0, 1] (np.clip's Python wrapper costs more than the work on small arrays)."""
    return np.minimum(np.maximum(a, 0.0, out=a), 1.0, out=a)


def _coverage(shape: str, box, r0: int, r1: int, c0: int, c1: int, orient: int, arm: float) -> np.ndarray:
    """Coverage (r1-r0, c1-c0) float32 of one shape whose bounding box is ``box`` (xyxy)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cov_x = _span_coverage(x1, x2, c0, c1)  # (w_r,) exact area coverage of the box
    cov_y = _span_coverage(y1, y2, r0, r1)  # (h_r,)
    if shape == "square":
        return cov_y[:, None] * cov_x[None, :]
    if shape == "cross":
        cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
        bar_x = _span_coverage(cx - 0.5 * arm * w, cx + 0.5 * arm * w, c0, c1)
        bar_y = _span_coverage(cy - 0.5 * arm * h, cy + 0.5 * arm * h, r0, r1)
        return np.maximum(cov_y[:, None] * bar_x[None, :], bar_y[:, None] * cov_x[None, :])
    xs = np.arange(c0, c1, dtype=np.float32) + 0.5  # pixel centres
    ys = np.arange(r0, r1, dtype=np.float32) + 0.5
    if shape == "circle":
        cx, cy, radius = 0.5 * (x1 + x2), 0.5 * (y1 + y2), 0.5 * w
        dist = np.sqrt((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2)  # (h_r, w_r)
        return _clip01(radius + 0.5 - dist)
    # Triangle: intersection of three half-planes; d = max of the signed distances to the edge lines
    # (exact inside, a slight over-estimate of coverage just outside the corners, which the box
    # coverage factor then trims so the shape never leaks out of its box).
    # Work in a frame where the apex points "up" along v, with u across: orient 0 up, 1 down, 2 left,
    # 3 right.
    if orient < 2:
        u = xs[None, :] - 0.5 * (x1 + x2)                          # (1, w_r) across
        v = (ys[:, None] - y1) if orient == 0 else (y2 - ys[:, None])  # (h_r, 1) from the apex
        half_base, height = 0.5 * w, h
    else:
        u = ys[:, None] - 0.5 * (y1 + y2)
        v = (xs[None, :] - x1) if orient == 2 else (x2 - xs[None, :])
        half_base, height = 0.5 * h, w
    # Side edges through the apex (0, 0) and the base corners (+-half_base, height): outward normal
    # (height, -half_base) / L for the right side, mirrored for the left; base edge v = height.
    norm = np.float32(np.hypot(height, half_base))
    d_sides = (height * np.abs(u) - half_base * v) / norm
    d = np.maximum(d_sides, v - height)
    return _clip01(0.5 - d) * (cov_y[:, None] * cov_x[None, :])


def _background(rng, size: int):
    """Textured background (3, size, size) float32 and its two base colours (2, 3).

    The canvas is channel-first while drawing: numpy broadcasts fast over long contiguous rows and
    slowly over a trailing axis of length 3 (measured 20x on a 128 px image).
    """
    colours = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # linear ramp in a random direction
        theta = rng.uniform(0, 2 * np.pi)
        g = np.linspace(-0.5, 0.5, size, dtype=np.float32)
        t = 0.5 + np.cos(theta) * g[None, :] + np.sin(theta) * g[:, None]
    elif kind == 1:  # smooth blobs: a coarse random field upsampled bilinearly
        k = int(rng.integers(2, 7))
        coarse = rng.uniform(0.0, 1.0, size=(k, k)).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
    else:  # soft stripes of random period and orientation
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(0.08, 0.5) * size
        g = np.arange(size, dtype=np.float32)
        phase = (np.cos(theta) * g[None, :] + np.sin(theta) * g[:, None]) * np.float32(2 * np.pi / period)
        t = 0.5 + 0.5 * np.sin(phase + np.float32(rng.uniform(0, 2 * np.pi)))
    t = np.clip(t, 0.0, 1.0, dtype=np.float32)
    bg = colours[0][:, None, None] + t[None] * (colours[1] - colours[0])[:, None, None]  # (3, S, S)
    return bg, colours


def _distance_to_segment(p, a, b) -> float:
    """Euclidean distance in RGB from colour p to the segment of colours a..b (3-tuples of floats)."""
    ab = [b[k] - a[k] for k in range(3)]
    ap = [p[k] - a[k] for k in range(3)]
    t = sum(ap[k] * ab[k] for k in range(3)) / max(sum(v * v for v in ab), 1e-6)
    t = min(max(t, 0.0), 1.0)
    return math.dist(p, [a[k] + t * ab[k] for k in range(3)])


def _pick_colour(rng, bg_colours, used, min_bg: float = 90.0, min_obj: float = 70.0):
    """A random colour far enough from the background's colours and from the objects already drawn.

    Plain Python floats: this runs a few times per object on 3-vectors, where numpy calls cost more
    than the arithmetic.
    """
    a, b = bg_colours[0].tolist(), bg_colours[1].tolist()
    for _ in range(30):
        colour = (rng.random(3) * 255.0).tolist()
        if _distance_to_segment(colour, a, b) < min_bg:
            continue
        if any(math.dist(colour, c) < min_obj for c in used):
            continue
        break  # else (rare): keep the last try, a low-contrast object is still a valid, hard example
    return colour


# Two objects of one class whose boxes overlap more than this are not drawn together: SSD's per-class
# NMS (IoU 0.45) would suppress one of them, so no detector could find both, and the VOC07 11-point AP
# of a class is capped at 10/11 as soon as one of its objects cannot be recalled.
_SAME_CLASS_MAX_IOU = 0.4


def draw_image(rng, size: int = 128, min_objects: int = 1, max_objects: int = 6, min_scale: float = 0.1,
               max_scale: float = 0.8, max_occlusion: float = 0.45, noise=(2.0, 10.0), return_visible=False,
               triangle_orientations: int = 1):
    """Draw one image from ``rng``.

    Returns
    -------
    image : (size, size, 3) uint8 RGB.
    boxes : (G, 4) float32 pixel xyxy, the full extent of each shape.
    labels : (G,) int64 in 1..4, in drawing order (later objects are on top).
    visible : (G,) float, only with ``return_visible``: the fraction of each object's pixels (those it
        covers by at least half) that no later object hides; always >= 1 - max_occlusion.
    """
    canvas, bg_colours = _background(rng, size)
    owner = np.full((size, size), -1, np.int8)  # which object is on top of each pixel (-1: none)
    area, visible = [], []                      # pixels of each object at alpha >= 0.5, and of those still seen
    boxes, labels, colours = [], [], []
    n_wanted = int(rng.integers(min_objects, max_objects + 1))
    log_lo, log_hi = np.log(min_scale * size), np.log(max_scale * size)
    for _ in range(n_wanted):
        cls = int(rng.integers(len(CLASS_NAMES)))
        shape = CLASS_NAMES[cls]
        orient = int(rng.integers(4)) % triangle_orientations  # 0 up, 1 down, 2 left, 3 right
        arm = float(rng.uniform(0.3, 0.42))
        for _attempt in range(6):
            s = float(np.exp(rng.uniform(log_lo, log_hi)))
            aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if shape in _STRETCHABLE else 1.0
            w = min(s * np.sqrt(aspect), 0.95 * size)
            h = min(s / np.sqrt(aspect), 0.95 * size)
            if shape not in _STRETCHABLE:
                w = h = min(w, h)
            x1 = float(rng.uniform(0.0, size - w))
            y1 = float(rng.uniform(0.0, size - h))
            box = (x1, y1, x1 + w, y1 + h)
            # minissd.boxes.iou, the one IoU: the same float64 operations in the same order as the scalar
            # copy that stood here (0 when the boxes do not overlap), so every image is bitwise unchanged.
            same = [other for lab, other in zip(labels, boxes, strict=True) if lab == cls + 1]
            if same and (iou(np.asarray([box]), np.asarray(same)) > _SAME_CLASS_MAX_IOU).any():
                continue  # per-class NMS (IoU 0.45) would keep only one of the two: place it elsewhere
            r0, r1 = int(y1), min(int(np.ceil(y1 + h)), size)
            c0, c1 = int(x1), min(int(np.ceil(x1 + w)), size)
            alpha = _coverage(shape, box, r0, r1, c0, c1, orient, arm)
            solid = alpha >= 0.5
            n_solid = int(solid.sum())
            if n_solid < 12:
                continue
            under = owner[r0:r1, c0:c1][solid]
            if len(area) and under.size:
                hidden = np.bincount(under.astype(np.int64) + 1, minlength=len(area) + 1)[1:]
                still = np.asarray(visible) - hidden
                if np.any(still < (1.0 - max_occlusion) * np.asarray(area)):
                    continue  # would hide too much of an earlier object: place it elsewhere
                visible = list(still)
            colour = _pick_colour(rng, bg_colours, colours)
            region = canvas[:, r0:r1, c0:c1]  # (3, h_r, w_r) view
            # "Over" compositing, in place: the anti-aliased edge blends with whatever lies below.
            region += alpha[None] * (np.asarray(colour, np.float32)[:, None, None] - region)
            owner[r0:r1, c0:c1][solid] = len(area)
            area.append(n_solid)
            visible.append(n_solid)
            boxes.append(box)
            labels.append(cls + 1)
            colours.append(colour)
            break
    # Per-pixel noise, uniform with standard deviation sigma; from raw bytes because that is 7x
    # cheaper than standard_normal here and the eye (or a detector) cannot tell the distributions apart.
    sigma = rng.uniform(noise[0], noise[1])
    grain = np.frombuffer(rng.bytes(3 * size * size), np.uint8).reshape(3, size, size).astype(np.float32)
    grain -= 127.5
    grain *= np.float32(sigma * np.sqrt(12.0) / 256.0)
    canvas += grain
    planes = np.clip(canvas, 0.0, 255.0, out=canvas).astype(np.uint8)  # (3, S, S)
    image = np.asarray(Image.merge("RGB", [Image.fromarray(p) for p in planes]))  # (S, S, 3)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if return_visible:
        return image, boxes, np.asarray(labels, np.int64), np.asarray(visible, float) / np.asarray(area, float)
    return image, boxes, np.asarray(labels, np.int64)


# ---------------------------------------------------------------------------------------------------
# Writing to disk in Pascal VOC layout.

def _voc_xml(image_id: str, width: int, height: int, boxes, labels, class_names) -> str:
    """A VOC annotation. VOC pixels are 1-based and inclusive: continuous [x1, x2) becomes
    xmin = round(x1) + 1, xmax = round(x2), the inverse of what VOCDataset reads."""
    objects = []
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        xmin, ymin = int(round(float(x1))) + 1, int(round(float(y1))) + 1
        xmax, ymax = max(int(round(float(x2))), xmin), max(int(round(float(y2))), ymin)
        objects.append(
            "  <object>\n"
            f"    <name>{class_names[int(label) - 1]}</name>\n"
            "    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>\n"
            "  </object>\n")
    return ("<annotation>\n  <folder>shapes</folder>\n"
            f"  <filename>{image_id}.jpg</filename>\n"
            f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n"
            "  <segmented>0</segmented>\n" + "".join(objects) + "</annotation>\n")


def write_voc(out: str, count: int, splits=("train", "val", "test"), seed: int = 0, size: int = 128,
              quality: int = 95) -> dict:
    """Write ``count`` images of each split to ``out`` in Pascal VOC layout; returns {split: [ids]}.

    ``out`` becomes a VOC dataset directory (what ``VOCdevkit/VOC2007`` is): Annotations/ID.xml,
    JPEGImages/ID.jpg, ImageSets/Main/SPLIT.txt (and trainval.txt when both train and val are
    written), and classes.txt (one class name per line), which VOCDataset uses instead of the 20
    VOC names.
    """
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    written = {}
    for split in splits:
        ds = ShapesDataset(split, size=size, seed=seed, count=count)
        ids = []
        for i in range(len(ds)):
            sample = ds.get(i)
            Image.fromarray(sample.image).save(os.path.join(out, "JPEGImages", sample.image_id + ".jpg"),
                                               quality=quality)
            xml = _voc_xml(sample.image_id, size, size, sample.boxes, sample.labels, CLASS_NAMES)
            with open(os.path.join(out, "Annotations", sample.image_id + ".xml"), "w", encoding="utf-8") as f:
                f.write(xml)
            ids.append(sample.image_id)
        written[split] = ids
    if "train" in written and "val" in written:
        written_tv = written["train"] + written["val"]
    else:
        written_tv = None
    lists = dict(written)
    if written_tv is not None:
        lists["trainval"] = written_tv
    for split, ids in lists.items():
        with open(os.path.join(out, "ImageSets", "Main", split + ".txt"), "w", encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in ids))
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in CLASS_NAMES))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minissd.data.shapes",
        description="Write the built-in shapes dataset to disk in Pascal VOC layout.")
    parser.add_argument("--out", required=True, help="output directory (becomes a VOC dataset directory)")
    parser.add_argument("--count", type=int, default=100, help="images per split (default 100)")
    parser.add_argument("--split", default="train,val,test", help="comma-separated splits (default train,val,test)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    args = parser.parse_args(argv)
    splits = [s for s in args.split.split(",") if s]
    bad = [s for s in splits if s not in SPLIT_IDS]
    if bad or not splits:
        parser.error(f"--split: expected names from {sorted(SPLIT_IDS)}, got {args.split!r}")
    if args.count < 0:
        parser.error("--count: expected a non-negative integer")
    written = write_voc(args.out, args.count, splits, seed=args.seed, size=args.size)
    for split, ids in written.items():
        print(f"{split}: {len(ids)} images")
    print(f"wrote {args.out} (VOC layout; read it back with minissd.data.VOCDataset({args.out!r}, 'test'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())

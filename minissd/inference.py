"""Inference: a model's detections in image pixels, for a dataset (evaluation) or for image files.

    images -> preprocess (resize, normalise with model.input_mean/std) -> model.forward
           -> clip_offsets -> model.detect (decode, softmax, per-class NMS, top-k) -> to_pixels

`detect_batch` is that chain for one preprocessed batch; `predict` runs it over a dataset (with the
ground truth, for `evaluate_model`'s VOC AP) and `detect_images` over a list of images of any size.
The train, evaluate and detect commands all use these functions.

Walkthrough: docs/09-inference-and-nms.md
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_cpu, to_device
from .checkpoint import CheckpointError
from .data import DataLoader, EvalTransform, is_placeholder, preprocess
from .imageio import read_image  # noqa: F401  (the one image reader: every PIL mode by a stated rule)
from .metrics import evaluate_detections
from .model import load_model


# ----------------------------------------------------------------------------------------------
# Checkpoints for inference
# ----------------------------------------------------------------------------------------------
def load_inference_model(path, device="cpu"):
    """``(model, class_names, meta)`` from a training state (last.npz/best.npz) or a `save_model` file.

    The model carries its input normalisation (``model.input_mean``/``input_std``); files written
    without it (e.g. converted torchvision weights) get the Caffe convention of the model's config.
    """
    model, meta = load_model(path)
    class_names = meta.get("class_names")
    if class_names is None:
        class_names = [f"class{i}" for i in range(1, model.num_classes)]
    if (not isinstance(class_names, (list, tuple)) or len(class_names) != model.num_classes - 1
            or not all(isinstance(n, str) for n in class_names)):
        raise CheckpointError(f"checkpoint {str(path)!r}: its class_names {class_names!r} do not name its "
                              f"{model.num_classes - 1} object classes (one string per class)")
    class_names = list(class_names)
    model.to(device)
    model.eval()
    return model, class_names, meta


# ----------------------------------------------------------------------------------------------
# From network outputs to pixels
# ----------------------------------------------------------------------------------------------
def to_pixels(boxes_xyxy, height, width):
    """Normalised xyxy boxes (K, 4) -> pixel xyxy in the image's frame, clipped to it (float64).

    Clipping at the edge, as torchvision does: a box that spills over the border means the object
    reaches the border, and a box partly outside the image can never be matched more than its
    visible part anyway.
    """
    b = to_cpu(boxes_xyxy).astype(np.float64).reshape(-1, 4)
    b = np.clip(b, 0.0, 1.0) * np.array([width, height, width, height], dtype=np.float64)
    return b


LOC_CLIP = 50.0


def clip_offsets(loc):
    """Offsets clipped to +-50 before decoding, so a diverging model's ``exp`` cannot overflow.

    A trained model's offsets are O(1) (targets are divided by the variances 0.1/0.2); 50 moves a box
    by 5 default-box widths and scales it by e^10, far outside anything real, but finite — so an
    evaluation of a half-trained or diverging model reports a low mAP instead of failing.
    (torchvision clamps its size offsets for the same reason.)
    """
    xp = get_array_module(loc)
    return xp.clip(loc, -LOC_CLIP, LOC_CLIP)


def detect_batch(model, x, sizes, *, device="cpu", **detect_kwargs) -> list:
    """Detections for a preprocessed batch ``x`` (N, 3, S, S), in the pixels of each image.

    ``sizes`` holds (H, W) per image. Returns a list of dicts with ``boxes`` (K, 4) xyxy pixels,
    ``labels`` (K,) in 1..C and ``scores`` (K,), by descending score. The one inference step of
    `predict` and `detect_images`.
    """
    # A model saved in float64 (e.g. after a gradient check) runs on float64 input; float32 is a no-op.
    x = np.asarray(x).astype(model.dtype, copy=False)
    loc, conf = model.forward(to_device(x, device))
    out = []
    for (h, w), d in zip(sizes, model.detect(clip_offsets(loc), conf, **detect_kwargs), strict=True):
        out.append({"boxes": to_pixels(d.boxes, int(h), int(w)),
                    "labels": to_cpu(d.labels).astype(np.int64),
                    "scores": to_cpu(d.scores).astype(np.float64)})
    return out


# ----------------------------------------------------------------------------------------------
# Images and datasets
# ----------------------------------------------------------------------------------------------
def detect_images(model, images, *, device="cpu", batch_size=8, **detect_kwargs):
    """Detections for a list of (H, W, 3) uint8 images, in each image's pixels (see `detect_batch`)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = np.stack([preprocess(image, model.image_size, model.input_mean, model.input_std)
                      for image in chunk])                           # (n, 3, S, S)
        out.extend(detect_batch(model, x, [image.shape[:2] for image in chunk], device=device,
                                **detect_kwargs))
    return out


def predict(model, dataset, *, batch_size=32, device="cpu", num_workers=0, detect_kwargs=None,
            should_stop=None, keep_images=0, progress=False):
    """Run the model over a dataset; detections and ground truth in image pixels.

    Returns a dict with ``detections`` (per image: ``boxes`` (K, 4) pixel xyxy, ``labels`` (K,)
    in 1..C, ``scores`` (K,)), ``ground_truths`` (per image: ``boxes`` (G, 4), ``labels``,
    ``difficult``), ``image_ids``, ``sizes`` ((H, W) per image) and, for the first
    ``keep_images`` images, ``images`` (H, W, 3) uint8. None if ``should_stop()`` became true.
    Placeholders of unreadable images (`minissd.data.SkipUnreadable` with ``substitute=False``) are
    left out of every list, so the scores are over the readable images.
    """
    detect_kwargs = dict(detect_kwargs or {})
    transform = EvalTransform(model.image_size, mean=model.input_mean, std=model.input_std)
    loader = DataLoader(dataset, batch_size, transform, shuffle=False, seed=0,
                        num_workers=num_workers, drop_last=False)
    dets, gts, ids, sizes, images = [], [], [], [], []
    seen = 0   # dataset index of the next image (placeholders included)
    bar = None
    if progress:
        from tqdm import tqdm  # optional dependency, only for the bar

        bar = tqdm(total=len(dataset), unit="img", desc="evaluate", dynamic_ncols=True)
    for batch in loader:
        if should_stop is not None and should_stop():
            return None
        batch_sizes = [(int(h), int(w)) for h, w in batch.sizes]
        out = detect_batch(model, batch.images, batch_sizes, device=device, **detect_kwargs)
        for j, (h, w) in enumerate(batch_sizes):
            index, seen = seen, seen + 1
            if is_placeholder(batch.ids[j]):
                continue   # an unreadable image (SkipUnreadable, evaluation mode): scored over the others
            dets.append(out[j])
            scale = np.array([w, h, w, h], dtype=np.float64)
            g = np.asarray(batch.boxes[j], dtype=np.float64).reshape(-1, 4) * scale
            diff = batch.difficult[j] if batch.difficult is not None else None
            gts.append({"boxes": g, "labels": np.asarray(batch.labels[j], dtype=np.int64).reshape(-1),
                        "difficult": (np.zeros(len(g), bool) if diff is None
                                      else np.asarray(diff, dtype=bool).reshape(-1))})
            ids.append(str(batch.ids[j]))
            sizes.append((h, w))
            if len(images) < keep_images:
                images.append(dataset.get(index).image)
        if bar is not None:
            bar.update(len(out))
    if bar is not None:
        bar.close()
    result = {"detections": dets, "ground_truths": gts, "image_ids": ids, "sizes": sizes}
    if keep_images:
        result["images"] = images
    return result


def count_objects(dataset):
    """Ground-truth objects in ``dataset`` read from its annotations, without decoding an image; None
    when the dataset cannot say (e.g. shapes, generated: every image has objects).

    Sees through `Subset` and `SkipUnreadable`; VOC and COCO datasets keep their annotations in
    ``records`` (``targets`` = boxes, labels, difficult/crowd). Used to refuse, before any work, data
    whose mAP is undefined or that has nothing to learn from.
    """
    indices = None
    while True:
        own = getattr(dataset, "__dict__", {})   # not getattr: the wrappers forward unknown attributes
        inner = own.get("dataset")
        if inner is None:
            break
        if "indices" in own:
            sel = list(own["indices"])
            indices = sel if indices is None else [sel[i] for i in indices]
        dataset = inner
    records = getattr(dataset, "records", None)
    if not isinstance(records, list) or not all(isinstance(r, dict) and "targets" in r for r in records):
        return None
    chosen = records if indices is None else [records[i] for i in indices]
    return sum(len(r["targets"][1]) for r in chosen)


# ----------------------------------------------------------------------------------------------
# VOC average precision
# ----------------------------------------------------------------------------------------------
def to_devkit_pixels(boxes_xyxy):
    """Continuous 0-based pixel boxes -> the devkit's 1-based inclusive pixel indices.

    minissd's VOC reader maps a devkit box ``xmin..xmax`` (1-based, both end pixels included) to
    ``(xmin - 1, ymin - 1, xmax, ymax)``; this is the inverse, so that overlaps computed with the
    devkit's ``x2 - x1 + 1`` widths see the boxes the devkit sees.
    """
    b = np.array(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    b[:, :2] += 1.0
    return b


def voc_scores(detections, ground_truths, num_object_classes, iou_threshold=0.5, inclusive_pixels=False):
    """VOC AP per class (11-point and area) and their means, from `predict`'s per-image lists.

    With ``inclusive_pixels`` the boxes (continuous pixels) are first put back into the devkit's
    1-based inclusive convention (`to_devkit_pixels`) and overlaps use its ``x2 - x1 + 1`` widths.

    Returns ``ap07``/``ap_area`` ({label: AP} for labels 1..C; NaN for a class without ground
    truth), ``map07``/``map_area`` (means over classes with ground truth), ``num_gt`` ({label:
    non-difficult objects}) and ``voc``, the full result of `minissd.metrics.evaluate_detections`
    (precision/recall per class for PR curves).
    """
    if inclusive_pixels:
        detections = [dict(d, boxes=to_devkit_pixels(d["boxes"])) for d in detections]
        ground_truths = [dict(g, boxes=to_devkit_pixels(g["boxes"])) for g in ground_truths]
    r = evaluate_detections(detections, ground_truths, num_object_classes, iou_threshold=iou_threshold,
                            use_07_metric=True, inclusive_pixels=inclusive_pixels)
    return {"ap07": {int(k): float(v) for k, v in r["ap_07"].items()},
            "ap_area": {int(k): float(v) for k, v in r["ap_area"].items()},
            "map07": float(r["map_07"]), "map_area": float(r["map_area"]),
            "num_gt": {int(k): int(v) for k, v in r["num_gt"].items()},
            "voc": r}


def evaluate_model(model, dataset, *, batch_size=32, device="cpu", num_workers=0, detect_kwargs=None,
                   iou_threshold=0.5, inclusive_pixels=False, should_stop=None, keep_images=0, progress=False):
    """`predict` then `voc_scores`; one dict with both (None if stopped)."""
    pred = predict(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                   detect_kwargs=detect_kwargs, should_stop=should_stop, keep_images=keep_images,
                   progress=progress)
    if pred is None:
        return None
    scores = voc_scores(pred["detections"], pred["ground_truths"], len(dataset.class_names),
                        iou_threshold=iou_threshold, inclusive_pixels=inclusive_pixels)
    pred.update(scores)
    pred["num_images"] = len(pred["detections"])
    return pred

"""python -m minissd.evaluate: VOC (and COCO) average precision of a checkpoint on a dataset.

    python -m minissd.evaluate --checkpoint runs/X/best.npz                 # shapes test split
    python -m minissd.evaluate --checkpoint ssd300.npz --dataset voc:VOCdevkit/VOC2007:test

Prints, per class, the number of ground-truth objects, VOC2007's 11-point AP and the all-point
("area", VOC2010+) AP, then their means; ``difficult`` objects count neither as hits nor as
misses, as in the devkit. For VOC-format data overlaps use the devkit's inclusive pixel
convention (width = x2 - x1 + 1), so numbers compare with published VOC results.
``--coco-json`` writes the detections in the COCO results format; COCO AP/AP50/AP75 come from
pycocotools when it is installed (``pip install 'minissd[coco]'``).

The library half (`evaluate_model`, `predict`, `Subset`, `load_inference_model`) is what
``python -m minissd.train`` uses for its validation and test evaluations.

Walkthrough: docs/11-inference.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .backend import DeviceError, resolve_device, to_cpu, to_device
from .checkpoint import CheckpointError


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


# ----------------------------------------------------------------------------------------------
# Checkpoints for inference
# ----------------------------------------------------------------------------------------------
def load_inference_model(path, device="cpu"):
    """``(model, class_names, meta)`` from a training state (last.npz/best.npz) or a `save_model` file."""
    from .model import load_model

    model, meta = load_model(path)
    class_names = meta.get("class_names")
    if class_names is None:
        class_names = [f"class{i}" for i in range(1, model.num_classes)]
    class_names = list(class_names)
    from .train import set_input_normalisation

    # Files without the keys (e.g. converted torchvision weights) get the Caffe convention of the
    # model's config: VGG mean, std 1.
    set_input_normalisation(model, meta.get("input_mean"), meta.get("input_std"))
    model.to(device)
    model.eval()
    return model, class_names, meta


# ----------------------------------------------------------------------------------------------
# Inference over a dataset
# ----------------------------------------------------------------------------------------------
def _eval_transform(model):
    from .data import EvalTransform

    if not hasattr(model, "input_mean"):
        from .train import set_input_normalisation

        set_input_normalisation(model)
    return EvalTransform(model.image_size, mean=model.input_mean, std=model.input_std)


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
    from .backend import get_array_module

    xp = get_array_module(loc)
    return xp.clip(loc, -LOC_CLIP, LOC_CLIP)


def predict(model, dataset, *, batch_size=32, device="cpu", num_workers=0, detect_kwargs=None,
            should_stop=None, keep_images=0, progress=False):
    """Run the model over a dataset; detections and ground truth in image pixels.

    Returns a dict with ``detections`` (per image: ``boxes`` (K, 4) pixel xyxy, ``labels`` (K,)
    in 1..C, ``scores`` (K,)), ``ground_truths`` (per image: ``boxes`` (G, 4), ``labels``,
    ``difficult``), ``image_ids``, ``sizes`` ((H, W) per image) and, for the first
    ``keep_images`` images, ``images`` (H, W, 3) uint8. None if ``should_stop()`` became true.
    """
    from .data import DataLoader

    detect_kwargs = dict(detect_kwargs or {})
    loader = DataLoader(dataset, batch_size, _eval_transform(model), shuffle=False, seed=0,
                        num_workers=num_workers, drop_last=False)
    dets, gts, ids, sizes, images = [], [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), unit="img", desc="evaluate", dynamic_ncols=True)
    for batch in loader:
        if should_stop is not None and should_stop():
            return None
        x = to_device(batch.images, device)
        loc, conf = model.forward(x)
        out = model.detect(clip_offsets(loc), conf, **detect_kwargs)
        for j, d in enumerate(out):
            h, w = (int(v) for v in batch.sizes[j])
            scale = np.array([w, h, w, h], dtype=np.float64)
            dets.append({"boxes": to_pixels(d.boxes, h, w),
                         "labels": to_cpu(d.labels).astype(np.int64),
                         "scores": to_cpu(d.scores).astype(np.float64)})
            g = np.asarray(batch.boxes[j], dtype=np.float64).reshape(-1, 4) * scale
            diff = batch.difficult[j] if batch.difficult is not None else None
            gts.append({"boxes": g, "labels": np.asarray(batch.labels[j], dtype=np.int64).reshape(-1),
                        "difficult": (np.zeros(len(g), bool) if diff is None
                                      else np.asarray(diff, dtype=bool).reshape(-1))})
            ids.append(str(batch.ids[j]))
            sizes.append((h, w))
            if len(images) < keep_images:
                images.append(dataset.get(len(ids) - 1).image)
        if bar is not None:
            bar.update(len(out))
    if bar is not None:
        bar.close()
    result = {"detections": dets, "ground_truths": gts, "image_ids": ids, "sizes": sizes}
    if keep_images:
        result["images"] = images
    return result


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
    from .metrics import evaluate_detections

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


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minissd.evaluate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Evaluate a minissd checkpoint: VOC2007 11-point AP and all-point (area) AP per class\n"
            "and their mean at an IoU threshold (default 0.5); optionally COCO AP via pycocotools."),
        epilog=(
            "examples:\n"
            "  python -m minissd.evaluate --checkpoint runs/X/best.npz\n"
            "  python -m minissd.evaluate --checkpoint runs/X/best.npz --split val --limit 200\n"
            "  python -m minissd.evaluate --checkpoint ssd300.npz --dataset voc:VOCdevkit/VOC2007:test \\\n"
            "      --device cuda --coco-json dets.json"),
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a run's best.npz / last.npz, or a file written by minissd.model.save_model")
    p.add_argument("--dataset", metavar="SPEC",
                   help="'shapes', 'voc:PATH[:SPLIT]' or 'coco:ANNOTATIONS_JSON:IMAGE_DIR' (default: the "
                        "dataset the checkpoint was trained on)")
    p.add_argument("--split", metavar="NAME",
                   help="split of a shapes or VOC dataset (shapes: train/val/test; VOC: an ImageSets/Main "
                        "list). Default: test for shapes; the SPLIT in the spec for VOC")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    p.add_argument("--device", metavar="DEV", help="'cpu' or 'cuda' (default: $MINISSD_DEVICE, else cpu)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default: 32)")
    p.add_argument("--num-workers", type=int, default=1, metavar="N",
                   help="background workers decoding images (default: 1)")
    p.add_argument("--iou-threshold", type=float, default=0.5, metavar="T",
                   help="IoU at which a detection matches a ground-truth box (default: 0.5, VOC)")
    p.add_argument("--score-threshold", type=float, default=0.01, metavar="S",
                   help="drop detections scoring below S before NMS (default: 0.01, the paper's)")
    p.add_argument("--nms-threshold", type=float, default=0.45, metavar="T",
                   help="per-class NMS IoU threshold (default: 0.45)")
    p.add_argument("--top-k", type=int, default=200, metavar="K", help="detections kept per image (default: 200)")
    incl = p.add_mutually_exclusive_group()
    incl.add_argument("--inclusive-pixels", dest="inclusive_pixels", action="store_true", default=None,
                      help="devkit overlaps: a box covers x2 - x1 + 1 pixels (default: on for voc: datasets)")
    incl.add_argument("--no-inclusive-pixels", dest="inclusive_pixels", action="store_false",
                      help="continuous overlaps, width x2 - x1 (default for shapes and coco:)")
    p.add_argument("--coco-json", metavar="PATH",
                   help="write the detections in the COCO results format (list of {image_id, category_id, "
                        "bbox [x, y, w, h], score})")
    p.add_argument("--coco", action="store_true",
                   help="also compute COCO AP, AP50, AP75 with pycocotools (coco: datasets do by default)")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _dataset_spec(args, meta) -> str:
    """The spec to evaluate on: --dataset (with --split applied), else the run's test/val data."""
    spec = args.dataset
    if spec is None:
        train_config = meta.get("train_config") or {}
        trained_on = train_config.get("dataset") or "shapes"
        if trained_on.partition(":")[0] == "shapes":
            spec = "shapes"
        else:
            spec = train_config.get("test_dataset") or train_config.get("val_dataset")
            if not spec:
                raise ValueError(f"the checkpoint was trained on {trained_on!r} without test or validation "
                                 "data; say which data to evaluate with --dataset")
    kind, _, rest = spec.partition(":")
    if kind == "shapes":
        return f"shapes:{args.split or rest or 'test'}"
    if args.split:
        if kind == "voc":
            path = rest if os.path.exists(rest) or ":" not in rest else rest.rsplit(":", 1)[0]
            return f"voc:{path}:{args.split}"
        raise ValueError(f"--split does not apply to {kind}: datasets (choose the annotation file instead)")
    return spec


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        device = resolve_device(args.device)
        model, class_names, meta = load_inference_model(args.checkpoint, device)
        from .train import open_data

        spec = _dataset_spec(args, meta)
        dataset = open_data(spec, args.limit, "test", "--dataset")
        if list(dataset.class_names) != class_names:
            raise ValueError(f"the checkpoint's classes {class_names} differ from the dataset's "
                             f"{list(dataset.class_names)}")
        inclusive = args.inclusive_pixels
        if inclusive is None:
            inclusive = spec.startswith("voc:")
        t = time.perf_counter()
        result = evaluate_model(
            model, dataset, batch_size=args.batch_size, device=device, num_workers=args.num_workers,
            detect_kwargs={"score_threshold": args.score_threshold, "nms_threshold": args.nms_threshold,
                           "top_k": args.top_k},
            iou_threshold=args.iou_threshold, inclusive_pixels=inclusive, progress=not args.quiet)
        dt = time.perf_counter() - t
    except (ValueError, DeviceError, CheckpointError, FileNotFoundError) as err:
        print(f"minissd.evaluate: error: {err}", file=sys.stderr)
        return 1

    from .train import _finite_or_none, format_ap_table

    n = result["num_images"]
    print(format_ap_table(result, class_names,
                          f"{spec}: {n} images, IoU {args.iou_threshold}, "
                          f"{'inclusive' if inclusive else 'continuous'} pixels, {n / max(dt, 1e-9):.1f} images/s"))
    summary = {"dataset": spec, "checkpoint": args.checkpoint, "num_images": n,
               "iou_threshold": args.iou_threshold, "inclusive_pixels": bool(inclusive),
               "map07": result["map07"], "map_area": result["map_area"],
               "ap07": {class_names[k - 1]: v for k, v in result["ap07"].items()},
               "ap_area": {class_names[k - 1]: v for k, v in result["ap_area"].items()},
               "num_gt": {class_names[k - 1]: v for k, v in result["num_gt"].items()}}

    want_coco = args.coco or spec.startswith("coco:")
    if args.coco_json or want_coco:
        status = _coco(args, spec, dataset, result, class_names, summary, want_coco)
        if status:
            return status
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(_finite_or_none(summary), f, indent=2, sort_keys=True)
            f.write("\n")
    print(f"mAP@{args.iou_threshold:g}: {result['map07']:.3f} (VOC07 11-point), "
          f"{result['map_area']:.3f} (area)")
    return 0


def _coco(args, spec, dataset, result, class_names, summary, want_coco) -> int:
    from . import metrics

    coco_json = args.coco_json
    if coco_json is None:
        coco_json = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "coco_results.json")
    metrics.write_coco_results(coco_json, result["detections"], result["image_ids"], dataset)
    print(f"COCO-format detections: {coco_json}")
    if not want_coco:
        return 0
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        print("COCO AP needs pycocotools, which is not installed: pip install 'minissd[coco]' "
              "(the VOC numbers above do not need it)", file=sys.stderr)
        return 0
    try:
        coco = metrics.coco_evaluate(result["detections"], result["ground_truths"], result["image_ids"],
                                     class_names, sizes=result["sizes"])
    except Exception as err:
        print(f"minissd.evaluate: COCO evaluation failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    summary["coco"] = coco
    print("COCO: " + ", ".join(f"{k} {v:.3f}" for k, v in coco.items() if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

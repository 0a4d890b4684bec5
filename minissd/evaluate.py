"""python -m minissd.evaluate: VOC (and COCO) average precision of a checkpoint on a dataset.

    python -m minissd.evaluate --checkpoint runs/X/best.npz                 # shapes test split
    python -m minissd.evaluate --checkpoint ssd300.npz --dataset voc:VOCdevkit/VOC2007:test

Prints, per class, the number of ground-truth objects, VOC2007's 11-point AP and the all-point
("area", VOC2010+) AP, then their means; ``difficult`` objects count neither as hits nor as
misses, as in the devkit. For VOC-format data overlaps use the devkit's inclusive pixel
convention (width = x2 - x1 + 1), so numbers compare with published VOC results.
``--coco-json`` writes the detections in the COCO results format; COCO AP/AP50/AP75 come from
pycocotools when it is installed (``pip install 'minissd[coco]'``).

This module is the command only; the inference and the AP computation it runs are the library's
(minissd/inference.py: `load_inference_model`, `evaluate_model`), which ``python -m minissd.train``
uses for its validation and test evaluations too.

Walkthrough: docs/09-inference-and-nms.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import metrics
from .backend import DeviceError, resolve_device
from .checkpoint import CheckpointError
from .data.specs import open_data, parse_dataset_spec, with_split
from .inference import evaluate_model, load_inference_model
from .training.runlog import finite_or_none, format_ap_table


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
    if args.split:
        return with_split(spec, args.split)
    if spec.partition(":")[0] == "shapes":     # shapes evaluates its test split unless told otherwise
        return with_split(spec, parse_dataset_spec(spec).split or "test")
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
            json.dump(finite_or_none(summary), f, indent=2, sort_keys=True)
            f.write("\n")
    print(f"mAP@{args.iou_threshold:g}: {result['map07']:.3f} (VOC07 11-point), "
          f"{result['map_area']:.3f} (area)")
    return 0


def _coco(args, spec, dataset, result, class_names, summary, want_coco) -> int:
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

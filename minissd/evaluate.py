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
import math
import os
import sys
import time

from . import metrics
from .backend import DeviceError, resolve_device
from .checkpoint import CheckpointError
from .data import SkipUnreadable
from .data.specs import open_data, parse_dataset_spec, with_split
from .fileio import write_json_atomic
from .inference import count_objects, evaluate_model, load_inference_model
from .training.runlog import finite_or_none, format_ap_table, one_line_warnings


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
    p.add_argument("--ap-thresholds", choices=metrics.AP_CONVENTIONS, default="exact",
                   help="also print the VOC07 11-point mAP with another evaluator's recall thresholds: "
                        "'python' (np.arange(0, 1.1, 0.1), py-faster-rcnn's voc_eval.py and most Python "
                        "evaluators), 'matlab' (the devkit's 0:0.1:1), 'caffe' (the authors' DetectionEvaluate, "
                        "recall in float32); the main number always uses exact k/10 (default: exact; "
                        "docs/10-evaluation.md)")
    p.add_argument("--coco", action="store_true",
                   help="also compute COCO AP, AP50, AP75 with pycocotools (coco: datasets do by default)")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON (its directory must exist)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave images that cannot be read out of the mAP (each reported once and counted) "
                        "instead of stopping with the file's name")
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


def _check_output(option, path):
    """Refuse, before the evaluation, an output path that could not be written at its end."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{option} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{option} {path}: the directory {directory} is not writable")


def _check_unit_interval(option, value):
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{option} must be in [0, 1], got {value}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with one_line_warnings():
            return _main(args)
    except KeyboardInterrupt:
        print("minissd.evaluate: interrupted; nothing was written", file=sys.stderr)
        return 130


def _main(args) -> int:
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
        if args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
        for option, value in (("--iou-threshold", args.iou_threshold), ("--score-threshold", args.score_threshold),
                              ("--nms-threshold", args.nms_threshold)):
            _check_unit_interval(option, value)
        _check_output("--json", args.json)
        _check_output("--coco-json", args.coco_json)
        device = resolve_device(args.device)
        model, class_names, meta = load_inference_model(args.checkpoint, device)
        spec = _dataset_spec(args, meta)
        dataset = open_data(spec, args.limit, "test", "--dataset")
        if list(dataset.class_names) != class_names:
            raise ValueError(f"the checkpoint's classes {class_names} differ from the dataset's "
                             f"{list(dataset.class_names)}")
        if len(dataset) == 0:
            raise ValueError(f"--dataset {spec!r}: holds no images (is its image list empty?)")
        if count_objects(dataset) == 0:
            raise ValueError(f"--dataset {spec!r}: its {len(dataset)} images hold no objects, so mAP is "
                             "undefined (average precision needs ground truth)")
        skipping = None
        if args.skip_unreadable:
            skipping = dataset = SkipUnreadable(
                dataset, log=lambda m: print(f"warning: {m}", file=sys.stderr, flush=True), substitute=False)
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
    if not math.isfinite(result["map07"]):   # e.g. every readable image without objects
        print(f"minissd.evaluate: error: mAP is undefined: the {n} evaluated images of {spec} hold no "
              "ground-truth objects", file=sys.stderr)
        return 1
    print(format_ap_table(result, class_names,
                          f"{spec}: {n} images, IoU {args.iou_threshold}, "
                          f"{'inclusive' if inclusive else 'continuous'} pixels, {n / max(dt, 1e-9):.1f} images/s"))
    summary = {"dataset": spec, "checkpoint": args.checkpoint, "num_images": n,
               "iou_threshold": args.iou_threshold, "inclusive_pixels": bool(inclusive),
               "map07": result["map07"], "map_area": result["map_area"],
               "ap07": {class_names[k - 1]: v for k, v in result["ap07"].items()},
               "ap_area": {class_names[k - 1]: v for k, v in result["ap_area"].items()},
               "num_gt": {class_names[k - 1]: v for k, v in result["num_gt"].items()},
               "ap_thresholds": args.ap_thresholds,
               "map07_by_thresholds": dict(result["voc"]["map_07_by_thresholds"])}
    if skipping is not None:
        summary["unreadable"] = skipping.summary()
        if skipping.skipped:
            print(f"unreadable images left out: {len(skipping.skipped)} (listed in --json's 'unreadable')")

    want_coco = args.coco or spec.startswith("coco:")
    if args.coco_json or want_coco:
        status = _coco(args, spec, dataset, result, class_names, summary, want_coco)
        if status:
            return status
    if args.json:
        write_json_atomic(args.json, finite_or_none(summary), sort_keys=True)
    other = ""
    if args.ap_thresholds != "exact":
        other = (f", {result['voc']['map_07_by_thresholds'][args.ap_thresholds]:.3f} "
                 f"(VOC07 11-point, {args.ap_thresholds} thresholds)")
    print(f"mAP@{args.iou_threshold:g}: {result['map07']:.3f} (VOC07 11-point, exact thresholds), "
          f"{result['map_area']:.3f} (area){other}")
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
    source = _coco_source(dataset)
    try:
        if source is not None:   # the official numbers: pycocotools reads the file's own ground truth
            coco = metrics.coco_evaluate_file(source.annotations, result["detections"], result["image_ids"],
                                              source.label_to_category)
        else:                    # other data: ground truth rebuilt from the boxes (area = w * h)
            coco = metrics.coco_evaluate(result["detections"], result["ground_truths"], result["image_ids"],
                                         class_names, sizes=result["sizes"])
    except Exception as err:
        print(f"minissd.evaluate: COCO evaluation failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    summary["coco"] = coco
    print("COCO: " + ", ".join(f"{k} {v:.3f}" for k, v in coco.items() if isinstance(v, float)))
    return 0


def _coco_source(dataset):
    """The COCODataset under ``dataset`` (through Subset / SkipUnreadable), or None for other data."""
    for _ in range(8):
        if hasattr(dataset, "annotations") and hasattr(dataset, "label_to_category"):
            return dataset
        dataset = getattr(dataset, "dataset", None)
        if dataset is None:
            return None
    return None


if __name__ == "__main__":
    sys.exit(main())

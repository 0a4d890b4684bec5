"""python -m minissd.detect: run a checkpoint on images, draw the boxes, write detections.json.

    python -m minissd.detect --checkpoint runs/X/best.npz photo.jpg more_photos/ --out dets/

Each image is resized to the model's input, run through the network and `SSD.detect`
(decode, softmax, per-class NMS, top-k), and the boxes are scaled back to the image's pixels
(`minissd.inference.detect_images`; this module is the command around it).
For every image a PNG with boxes, class names and scores goes into ``--out``; all detections go
into ``--out``/detections.json (or ``--json``) as
``[{"image": path, "width": W, "height": H, "detections": [{"label", "class", "score",
"box": [x1, y1, x2, y2]}]}]``.

Walkthrough: docs/09-inference-and-nms.md
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from .backend import DeviceError, resolve_device
from .checkpoint import CheckpointError
from .fileio import write_json_atomic
from .inference import detect_images, load_inference_model, read_image
from .training.runlog import one_line_warnings
from .viz import save_detection_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def find_images(inputs) -> list[str]:
    """Image files named in ``inputs`` (files, or directories searched non-recursively), in order."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"directory {item!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item!r} is neither an image file nor a directory")
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minissd.detect",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect objects in images with a minissd checkpoint; save annotated PNGs and a JSON list.",
        epilog=("example:\n  python -m minissd.detect --checkpoint runs/X/best.npz images/ --threshold 0.5 "
                "--out detections/"),
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories of images")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a run's best.npz / last.npz, or a file written by minissd.model.save_model")
    p.add_argument("--threshold", type=float, default=0.5, metavar="S",
                   help="keep detections scoring at least S (default: 0.5)")
    p.add_argument("--nms-threshold", type=float, default=0.45, metavar="T",
                   help="per-class NMS IoU threshold (default: 0.45)")
    p.add_argument("--top-k", type=int, default=200, metavar="K", help="at most K detections per image (default: 200)")
    p.add_argument("--out", default="detections", metavar="DIR",
                   help="directory for the annotated PNGs and detections.json (default: detections)")
    p.add_argument("--json", metavar="PATH", help="where to write the detections (default: OUT/detections.json)")
    p.add_argument("--no-images", action="store_true", help="write only the JSON, no annotated PNGs")
    p.add_argument("--device", metavar="DEV", help="'cpu' or 'cuda' (default: $MINISSD_DEVICE, else cpu)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default: 8)")
    return p


def _png_names(paths):
    """Output names <stem>.png, made unique when two inputs share a stem."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(f"{stem}.png" if n == 0 else f"{stem}_{n}.png")
    return names


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with one_line_warnings():
            return _main(args)
    except KeyboardInterrupt:
        print("minissd.detect: interrupted (files already written are complete)", file=sys.stderr)
        return 130


def _main(args) -> int:
    try:
        for option, value in (("--threshold", args.threshold), ("--nms-threshold", args.nms_threshold)):
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"{option} must be in [0, 1], got {value}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out {args.out}: is a file, not a directory; choose another --out")
        if args.json is not None:
            if os.path.isdir(args.json):
                raise ValueError(f"--json {args.json}: is a directory; give a file name")
            json_dir = os.path.dirname(os.path.abspath(args.json))
            if not os.path.isdir(json_dir):
                raise ValueError(f"--json {args.json}: the directory {json_dir} does not exist")
        paths = find_images(args.inputs)
        device = resolve_device(args.device)
        model, class_names, _ = load_inference_model(args.checkpoint, device)
        os.makedirs(args.out, exist_ok=True)
        records = []
        names = _png_names(paths)
        # Images are read and run in small groups so a directory of photos never sits in memory at once.
        for start in range(0, len(paths), args.batch_size):
            group = paths[start:start + args.batch_size]
            images = [read_image(p) for p in group]
            # Score threshold before NMS as well: boxes below it could never be shown anyway.
            dets = detect_images(model, images, device=device, batch_size=args.batch_size,
                                 score_threshold=args.threshold, nms_threshold=args.nms_threshold,
                                 top_k=args.top_k)
            for k, (path, image, det) in enumerate(zip(group, images, dets, strict=True)):
                keep = det["scores"] >= args.threshold
                det = {key: v[keep] for key, v in det.items()}
                h, w = image.shape[:2]
                entries = [{"label": int(lab), "class": class_names[int(lab) - 1], "score": round(float(s), 4),
                            "box": [round(float(v), 2) for v in box]}
                           for box, lab, s in zip(det["boxes"], det["labels"], det["scores"], strict=True)]
                rec = {"image": path, "width": int(w), "height": int(h), "detections": entries}
                if not args.no_images:
                    png = os.path.join(args.out, names[start + k])
                    save_detection_image(png, image, det["boxes"], det["labels"], det["scores"], class_names)
                    rec["output"] = png
                records.append(rec)
                summary = ", ".join(f"{e['class']} {e['score']:.2f}" for e in entries[:6])
                more = f", ... ({len(entries)} in all)" if len(entries) > 6 else ""
                print(f"{path}: {len(entries)} detection{'s' if len(entries) != 1 else ''}"
                      f"{': ' + summary + more if entries else ''}")
        json_path = args.json or os.path.join(args.out, "detections.json")
        write_json_atomic(json_path, records, indent=1)
        print(f"wrote {json_path}" + ("" if args.no_images else f" and {len(records)} PNGs in {args.out}"))
        return 0
    except (ValueError, DeviceError, CheckpointError, FileNotFoundError) as err:
        print(f"minissd.detect: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

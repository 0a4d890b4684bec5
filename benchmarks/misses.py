"""Which objects does a trained model never find? The recall ceiling of VOC07 11-point AP.

    python benchmarks/misses.py CHECKPOINT [--dataset shapes:test] [--limit N] [--show 40]

VOC07's 11-point AP averages, over the recall levels t = 0, 0.1, ..., 1.0, the best precision at a
recall of at least t. A class whose detections never reach recall 1.0 scores 0 at t = 1.0, so its AP
is at most 10/11 = 0.909 however clean its ranking is: on the shapes test split (1751 objects) one
object that no detection of its class overlaps at IoU >= 0.5, at any score, caps its class there.
This script runs the model over a dataset with the evaluation settings of `minissd.evaluate`, matches
the detections as the devkit does (`minissd.metrics.match_detections`) and prints, per class, the
recall at the lowest score and each object that stays unmatched: its size sqrt(w h) in pixels, its
aspect w/h, the best IoU any detection of its class reaches (under 0.5: badly placed; 0: nothing
there), the largest IoU with another object of the image and, for shapes, the fraction of it that is
visible (the rest hidden under later objects). Results: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def missed_objects(detections, ground_truths, iou_threshold=0.5):
    """Per image and class, the non-difficult ground truths that no detection matches (devkit rules).

    ``detections`` / ``ground_truths``: the per-image lists of `minissd.inference.predict`. Returns a
    list of dicts (``image``: index, ``gt``: index in that image, ``label``, ``best_iou``: highest IoU
    of a same-class detection, 0 if none) and ``found``/``total`` ({label: count}).
    """
    from minissd.boxes import iou
    from minissd.metrics import match_detections

    missed, found, total = [], {}, {}
    for i, (det, gt) in enumerate(zip(detections, ground_truths, strict=True)):
        for label in np.unique(gt["labels"]):
            gi = np.flatnonzero((gt["labels"] == label) & ~gt["difficult"])
            di = np.flatnonzero(det["labels"] == label)
            di = di[np.argsort(-det["scores"][di], kind="stable")]
            all_gi = np.flatnonzero(gt["labels"] == label)
            taken = np.zeros(len(all_gi), bool)
            best = np.zeros(len(all_gi))
            if len(di):
                ov = iou(det["boxes"][di], gt["boxes"][all_gi])                 # (K, G) in rank order
                best = ov.max(axis=0)
                tp, _ = match_detections(det["boxes"][di], gt["boxes"][all_gi], gt["difficult"][all_gi],
                                         iou_threshold)
                taken[np.argmax(ov[tp], axis=1)] = True
            lab = int(label)
            total[lab] = total.get(lab, 0) + len(gi)
            for j, g in enumerate(all_gi):
                if gt["difficult"][g]:
                    continue
                if taken[j]:
                    found[lab] = found.get(lab, 0) + 1
                else:
                    missed.append({"image": i, "gt": int(g), "label": lab, "best_iou": float(best[j])})
    return missed, found, total


def _visible_fractions(dataset, index):
    """Shapes only: the visible fraction of each object of image ``index`` (None for other data)."""
    from minissd.data.shapes import SPLIT_IDS, ShapesDataset, draw_image

    if not isinstance(dataset, ShapesDataset):
        return None
    rng = np.random.default_rng([dataset.seed, SPLIT_IDS[dataset.split], int(index)])
    *_, visible = draw_image(rng, dataset.size, dataset.min_objects, dataset.max_objects, dataset.min_scale,
                             dataset.max_scale, dataset.max_occlusion, dataset.noise, return_visible=True,
                             triangle_orientations=dataset.triangle_orientations)
    return visible


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a training state (best.npz, last.npz) or a model file")
    parser.add_argument("--dataset", default="shapes:test", help="dataset spec (default: shapes:test)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="the first N images only")
    parser.add_argument("--show", type=int, default=40, metavar="N", help="missed objects listed (default: 40)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, metavar="T")
    args = parser.parse_args(argv)

    from minissd.boxes import iou
    from minissd.data.specs import open_dataset
    from minissd.inference import load_inference_model, predict
    from minissd.metrics import voc_ap

    model, class_names, _ = load_inference_model(args.checkpoint)
    kind, _, split = args.dataset.partition(":")
    dataset = open_dataset(kind, split or "test", size=model.image_size) if kind == "shapes" \
        else open_dataset(args.dataset)
    if args.limit is not None:
        from minissd.data.specs import Subset

        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    pred = predict(model, dataset)
    missed, found, total = missed_objects(pred["detections"], pred["ground_truths"], args.iou_threshold)
    print(f"{args.checkpoint} on {args.dataset}: {len(pred['detections'])} images, "
          f"{sum(total.values())} objects, {len(missed)} never matched at IoU >= {args.iou_threshold}")
    print(f"{'class':12s} {'#gt':>5s} {'missed':>6s} {'recall':>7s}  11-point AP ceiling")
    for label in sorted(total):
        rec = found.get(label, 0) / max(total[label], 1)
        ceiling = voc_ap(np.array([rec]), np.array([1.0]), use_07_metric=True)
        print(f"{class_names[label - 1]:12s} {total[label]:5d} {total[label] - found.get(label, 0):6d} "
              f"{rec:7.4f}  {ceiling:.3f}")
    print("\nimage  class       sqrt(wh)   w/h  best IoU  max IoU other  visible")
    base = getattr(dataset, "dataset", dataset)
    for m in missed[:args.show]:
        g = pred["ground_truths"][m["image"]]
        box = g["boxes"][m["gt"]]
        w, h = box[2] - box[0], box[3] - box[1]
        others = np.delete(np.arange(len(g["boxes"])), m["gt"])
        other = float(iou(box[None], g["boxes"][others]).max()) if len(others) else 0.0
        vis = _visible_fractions(base, m["image"])
        vis_s = f"{vis[m['gt']]:.2f}" if vis is not None else "-"
        print(f"{pred['image_ids'][m['image']]:>5s}  {class_names[m['label'] - 1]:10s} {np.sqrt(w * h):8.1f} "
              f"{w / h:5.2f} {m['best_iou']:9.2f} {other:14.2f} {vis_s:>8s}")
    if len(missed) > args.show:
        print(f"... {len(missed) - args.show} more (--show)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

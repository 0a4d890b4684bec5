"""The inference library (minissd/inference.py): VOC scores from per-image lists, pixel conventions,
Subset (minissd/data/specs.py), viz.

The AP arithmetic itself is minissd.metrics' (tests/test_metrics.py); these tests hold the adapter
that the train and evaluate commands use to hand-computed cases.
"""
import math
import os

import numpy as np
import pytest

from minissd import viz
from minissd.data import Subset
from minissd.inference import clip_offsets, to_devkit_pixels, to_pixels, voc_scores


def det(boxes, labels, scores):
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "labels": np.array(labels, np.int64),
            "scores": np.array(scores, np.float64)}


def gt(boxes, labels, difficult=None):
    n = len(labels)
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "labels": np.array(labels, np.int64),
            "difficult": np.zeros(n, bool) if difficult is None else np.array(difficult, bool)}


def test_hand_computed_case():
    # Class 1: two objects; detections ranked 0.9 (hit), 0.8 (miss), 0.7 (hit).
    #   precision after each rank 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    #   11-point: thresholds 0..0.5 (6 of them) see max precision 1, 0.6..1.0 (5) see 2/3:
    #   (6 * 1 + 5 * 2/3) / 11 = 28/33. Area: 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # Class 2: one object, no detection -> AP 0. Class 3: no objects, one detection -> NaN, not in the mean.
    # Class 4: a difficult object only, detected -> NaN (nothing to find), the detection is not a miss.
    dets = [det([[0, 0, 10, 10], [50, 50, 60, 60], [90, 90, 99, 99]], [1, 1, 3], [0.9, 0.8, 0.5]),
            det([[20, 20, 40, 40], [0, 0, 5, 5]], [1, 4], [0.7, 0.6])]
    gts = [gt([[0, 0, 10, 10], [70, 70, 80, 80]], [1, 2]),
           gt([[20, 20, 40, 40], [0, 0, 5, 5]], [1, 4], difficult=[False, True])]
    r = voc_scores(dets, gts, 4)
    assert r["ap07"][1] == pytest.approx(28 / 33)
    assert r["ap_area"][1] == pytest.approx(5 / 6)
    assert r["ap07"][2] == 0.0 and r["ap_area"][2] == 0.0
    assert math.isnan(r["ap07"][3]) and math.isnan(r["ap07"][4])
    assert r["map07"] == pytest.approx((28 / 33 + 0.0) / 2)
    assert r["map_area"] == pytest.approx((5 / 6 + 0.0) / 2)
    assert r["num_gt"] == {1: 2, 2: 1, 3: 0, 4: 0}


def test_tied_scores_rank_in_image_order():
    # Two detections with the same score, the miss in the first image: stable order ranks it first.
    # precision 0, 1/2; recall 0, 1 -> 11-point: every threshold sees 1/2 -> AP 1/2.
    dets = [det([[50, 50, 60, 60]], [1], [0.5]), det([[0, 0, 10, 10]], [1], [0.5])]
    gts = [gt(np.zeros((0, 4)), []), gt([[0, 0, 10, 10]], [1])]
    r = voc_scores(dets, gts, 1)
    assert r["ap07"][1] == pytest.approx(0.5)


def test_inclusive_pixels_equal_continuous_overlaps_for_reader_boxes(rng):
    # minissd's VOC reader turns devkit boxes into continuous ones (x1 - 1, y1 - 1, x2, y2); putting
    # them back and using the devkit's +1 widths gives the same overlaps, hence the same AP.
    def boxes(n):
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(5, 40, (n, 2))
        return np.round(np.concatenate([xy, xy + wh], 1))

    gts = [gt(boxes(4), rng.integers(1, 4, 4)) for _ in range(6)]
    dets = []
    for g in gts:
        b = g["boxes"] + rng.normal(0, 3, g["boxes"].shape)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        dets.append(det(np.concatenate([b, boxes(2)]), np.concatenate([g["labels"], rng.integers(1, 4, 2)]),
                        rng.uniform(0, 1, 6)))
    a = voc_scores(dets, gts, 3, inclusive_pixels=False)
    b = voc_scores(dets, gts, 3, inclusive_pixels=True)
    assert a["ap07"] == pytest.approx(b["ap07"]) and a["ap_area"] == pytest.approx(b["ap_area"])
    assert 0 < a["map07"] < 1
    assert np.array_equal(to_devkit_pixels([[0, 0, 10, 5]]), [[1, 1, 10, 5]])


def test_to_pixels_scales_and_clips():
    b = to_pixels(np.array([[0.1, 0.2, 0.5, 1.2], [-0.1, 0.0, 0.3, 0.4]]), 100, 200)
    assert np.allclose(b, [[20, 20, 100, 100], [0, 0, 60, 40]])
    assert clip_offsets(np.array([1e6, -1e6, 3.0])).tolist() == [50.0, -50.0, 3.0]


def test_subset():
    from minissd.data import ShapesDataset

    ds = ShapesDataset("val", count=10)
    sub = Subset(ds, [3, 7])
    assert len(sub) == 2 and sub.class_names == ds.class_names
    assert sub.get(1).image_id == ds.get(7).image_id
    with pytest.raises(ValueError, match="index 10"):
        Subset(ds, [10])


def test_viz_files(tmp_path):
    records = [{"iteration": i, "loss": 10.0 / i, "conf": 6.0 / i, "loc": 4.0 / i, "lr": 0.01} for i in range(1, 30)]
    records += [{"iteration": 10, "split": "val", "map": 0.3}, {"iteration": 29, "split": "val", "map": 0.6}]
    path = viz.plot_curves(records, tmp_path / "curves.png")
    assert os.path.getsize(path) > 10_000
    image = np.zeros((64, 96, 3), np.uint8)
    d = det([[10, 10, 50, 40], [-1e6, 5, 1e6, 30]], [1, 2], [0.9, 0.4])   # a wild box must not break drawing
    path = viz.detection_grid(tmp_path / "grid.png", [image, image], [d, d], ["circle", "square"],
                              ground_truths=[d["boxes"][:1], np.zeros((0, 4))])
    assert os.path.getsize(path) > 5_000
    path = viz.save_detection_image(tmp_path / "one.png", image, d["boxes"], d["labels"], d["scores"],
                                    ["circle", "square"])
    from PIL import Image

    assert Image.open(path).size[0] >= 96
    with pytest.raises(ValueError, match="labels"):
        viz.draw_boxes(None, np.zeros((2, 4)), labels=[1])

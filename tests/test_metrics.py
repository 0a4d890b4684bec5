"""VOC AP and COCO helpers (minissd/metrics.py) against answers worked out by hand.

Each case writes its ranked list and its expected AP as fractions in the comments.
"""
import json
import math
import sys
from typing import NamedTuple

import numpy as np
import pytest

from minissd.boxes import iou as box_iou
from minissd.metrics import (
    coco_evaluate,
    coco_results,
    evaluate_detections,
    match_detections,
    voc_ap,
    write_coco_results,
)

A = [0, 0, 10, 10]
B = [20, 20, 30, 30]
FAR = [50, 50, 60, 60]


def det(boxes, labels, scores):
    return (np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels, dtype=np.int64),
            np.array(scores, dtype=float))


def gt(boxes, labels, difficult=None):
    boxes = np.array(boxes, dtype=float).reshape(-1, 4)
    d = np.zeros(len(boxes), bool) if difficult is None else np.array(difficult, bool)
    return boxes, np.array(labels, dtype=np.int64), d


# -- voc_ap ----------------------------------------------------------------------------------------
def test_voc_ap_11_point_and_area_by_hand():
    rec = [0.25, 0.5, 0.5, 0.75]
    prec = [1, 1, 2 / 3, 3 / 4]
    # 11-point: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> max(1, 2/3, 3/4) = 1; t = .6, .7 -> 3/4; t >= .8 -> 0
    assert voc_ap(rec, prec, True) == pytest.approx((6 + 2 * 0.75) / 11, abs=1e-15)
    # area: envelope 1 on (0, .5], 3/4 on (.5, .75], 0 after: .5 + .25 * 3/4 = 11/16
    assert voc_ap(rec, prec, False) == pytest.approx(11 / 16, abs=1e-15)


def test_voc_ap_uses_the_precision_envelope():
    # ranked FP, TP, TP with 2 objects: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. The envelope lifts
    # the 1/2 to 2/3, so both kinds give 2/3 (without it the area would be 1/2 * 1/2 + 1/2 * 2/3).
    assert voc_ap([0, 0.5, 1], [0, 1 / 2, 2 / 3], False) == pytest.approx(2 / 3, abs=1e-15)
    assert voc_ap([0, 0.5, 1], [0, 1 / 2, 2 / 3], True) == pytest.approx(2 / 3, abs=1e-15)


def test_voc_ap_thresholds_are_exact_tenths():
    # recall exactly 3/10 reaches t = 0.3: 4 of 11 thresholds (a float arange would give 3/11)
    assert voc_ap([3 / 10], [1.0], True) == pytest.approx(4 / 11, abs=1e-15)


def test_voc_ap_perfect_empty_and_zero():
    assert voc_ap([0.5, 1.0], [1.0, 1.0], True) == 1.0
    assert voc_ap([0.5, 1.0], [1.0, 1.0], False) == 1.0
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0
    assert voc_ap([0.0, 0.0], [0.0, 0.0], False) == 0.0


@pytest.mark.parametrize("rec,prec,match", [([0.1, 0.2], [1.0], "one length"), ([[0.1]], [[1.0]], "1-D"),
                                            ([np.nan], [1.0], "recall"), ([0.5], [1.5], "precision")])
def test_voc_ap_bad_input(rec, prec, match):
    with pytest.raises(ValueError, match=match):
        voc_ap(rec, prec)


# -- evaluate_detections ---------------------------------------------------------------------------
def test_ties_duplicates_and_misses_by_hand():
    gts = [gt([A, B], [1, 1]), gt([A], [1])]                      # 3 objects of class 1
    dets = [det([A, A, FAR], [1, 1, 1], [0.9, 0.8, 0.7]),         # TP, duplicate, miss
            det([A], [1], [0.8])]                                 # TP, tied with the duplicate
    r = evaluate_detections(dets, gts, num_classes=1)
    # Ranked (stable: the 0.8 of image 0 before the 0.8 of image 1): TP, FP, TP, FP
    assert r["tp"][1].tolist() == [True, False, True, False]
    np.testing.assert_allclose(r["precision"][1], [1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(r["recall"][1], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # 11-point: t <= .3 -> 1 (4 thresholds), t = .4, .5, .6 -> 2/3, t >= .7 -> 0: (4 + 2) / 11
    assert r["ap"][1] == pytest.approx(6 / 11, abs=1e-12) and r["map"] == r["ap"][1]
    # area: 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert r["ap_area"][1] == pytest.approx(5 / 9, abs=1e-12) and r["map_area"] == r["ap_area"][1]
    assert r["num_gt"] == {1: 3} and r["num_det"] == {1: 4}
    r_area = evaluate_detections(dets, gts, 1, use_07_metric=False)
    assert r_area["ap"][1] == r["ap_area"][1] and r_area["map"] == r["map_area"]


def test_tie_order_follows_image_order():
    # Same detections, images swapped: the tied TP (now image 0) ranks before the duplicate.
    gts = [gt([A], [1]), gt([A, B], [1, 1])]
    dets = [det([A], [1], [0.8]), det([A, A, FAR], [1, 1, 1], [0.9, 0.8, 0.7])]
    r = evaluate_detections(dets, gts, 1)
    assert r["tp"][1].tolist() == [True, True, False, False]
    # precision 1, 1, 2/3, 1/2 at recall 1/3, 2/3, 2/3, 2/3: 11-point = 7/11
    assert r["ap"][1] == pytest.approx(7 / 11, abs=1e-12)


def test_class_without_detections_is_zero_and_class_without_gt_is_nan():
    gts = [gt([A, B], [1, 2])]
    dets = [det([A, FAR], [1, 3], [0.9, 0.5])]        # class 2: no detection; class 3: no object
    r = evaluate_detections(dets, gts, num_classes=3)
    assert r["ap"][1] == 1.0 and r["ap"][2] == 0.0 and math.isnan(r["ap"][3])
    assert math.isnan(r["ap_area"][3]) and r["num_gt"] == {1: 1, 2: 1, 3: 0}
    assert r["map"] == pytest.approx(0.5) and r["map_area"] == pytest.approx(0.5)   # NaN left out
    assert r["precision"][2].size == 0 and r["precision"][3].tolist() == [0.0]


def test_no_ground_truth_at_all_gives_nan_map():
    r = evaluate_detections([det([A], [1], [0.9])], [gt([], [])], num_classes=1)
    assert math.isnan(r["map"]) and math.isnan(r["ap"][1])


def test_difficult_objects_count_neither_way():
    gts = [gt([A, B], [1, 1], difficult=[True, False])]
    dets = [det([A, FAR, B, A], [1, 1, 1, 1], [0.95, 0.9, 0.8, 0.5])]
    r = evaluate_detections(dets, gts, 1)
    # ranked: on difficult A (ignored), FAR (FP), B (TP), A again (ignored, not a duplicate)
    assert r["tp"][1].tolist() == [False, False, True, False]
    assert r["fp"][1].tolist() == [False, True, False, False]
    assert r["num_gt"][1] == 1
    # precision 0, 0, 1/2, 1/2 at recall 0, 0, 1, 1: every threshold's best precision is 1/2
    assert r["ap"][1] == pytest.approx(0.5, abs=1e-12) and r["ap_area"][1] == pytest.approx(0.5, abs=1e-12)
    # were A not difficult: TP, FP, TP, FP -> 11-point (6 * 1 + 5 * 2/3) / 11
    r2 = evaluate_detections(dets, [gt([A, B], [1, 1])], 1)
    assert r2["ap"][1] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_iou_threshold_is_inclusive_and_pixel_convention():
    g = [gt([[0, 0, 9, 9]], [1])]
    d = [det([[0, 0, 9, 4]], [1], [0.9])]
    # continuous: 9*4 / 9*9 = 4/9 < 0.5 -> miss; devkit pixels: 10*5 / 10*10 = 1/2 >= 0.5 -> hit
    assert evaluate_detections(d, g, 1)["ap"][1] == 0.0
    assert evaluate_detections(d, g, 1, inclusive_pixels=True)["ap"][1] == 1.0
    assert box_iou([[0, 0, 9, 4]], [[0, 0, 9, 9]], inclusive_pixels=True)[0, 0] == 0.5
    assert evaluate_detections(d, g, 1, iou_threshold=4 / 9 - 1e-12)["ap"][1] == 1.0


def test_overlaps_come_from_the_one_iou_and_flipped_detections_are_refused(monkeypatch):
    # metrics has no IoU of its own: match_detections asks minissd.boxes.iou (with the devkit's +1 on request).
    import minissd.metrics as metrics_mod
    calls = []

    def spy(a, b, inclusive_pixels=False):
        calls.append(inclusive_pixels)
        return box_iou(a, b, inclusive_pixels)
    monkeypatch.setattr(metrics_mod, "box_iou", spy)
    g = [gt([[0, 0, 9, 9]], [1])]
    assert evaluate_detections([det([[0, 0, 9, 4]], [1], [0.9])], g, 1, inclusive_pixels=True)["ap"][1] == 1.0
    assert calls == [True]
    with pytest.raises(ValueError, match=r"detections\[0\]\.boxes must be xyxy"):
        evaluate_detections([det([[9, 0, 0, 9]], [1], [0.9])], g, 1)


def test_devkit_duplicate_rule_versus_greedy():
    a, b = [0, 0, 10, 10], [5, 0, 15, 10]
    second = [2, 0, 12, 10]           # IoU 2/3 with a (taken), 7/13 with b (free)
    tp, fp = match_detections(np.array([a, second], float), np.array([a, b], float), np.zeros(2, bool))
    assert tp.tolist() == [True, False] and fp.tolist() == [False, True]     # the devkit: a duplicate
    tp, fp = match_detections(np.array([a, second], float), np.array([a, b], float), np.zeros(2, bool),
                              devkit_matching=False)
    assert tp.tolist() == [True, True] and fp.tolist() == [False, False]


def test_matching_agrees_with_a_sequential_loop(rng):
    # the vectorised devkit rule equals the devkit's loop, detection by detection
    for _ in range(200):
        g = rng.uniform(0, 20, (rng.integers(0, 5), 2))
        g = np.concatenate([g, g + rng.uniform(2, 10, g.shape)], 1)
        d = rng.uniform(0, 20, (rng.integers(0, 8), 2))
        d = np.concatenate([d, d + rng.uniform(2, 10, d.shape)], 1)
        diff = rng.random(len(g)) < 0.3
        tp, fp = match_detections(d, g, diff, 0.3)
        taken = np.zeros(len(g), bool)
        for k in range(len(d)):
            if len(g) == 0:
                assert fp[k] and not tp[k]
                continue
            ov = box_iou(d[k:k + 1], g)[0]
            j = int(np.argmax(ov))
            if ov[j] >= 0.3:
                if diff[j]:
                    assert not tp[k] and not fp[k]
                elif not taken[j]:
                    taken[j] = True
                    assert tp[k] and not fp[k]
                else:
                    assert fp[k] and not tp[k]
            else:
                assert fp[k] and not tp[k]


class Detections(NamedTuple):
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


class Sample(NamedTuple):   # the shape of minissd.data.Sample
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    image_id: str


def test_accepts_tuples_mappings_and_records():
    gts = [gt([A, B], [1, 1]), gt([A], [1])]
    dets = [det([A, A, FAR], [1, 1, 1], [0.9, 0.8, 0.7]), det([A], [1], [0.8])]
    ref = evaluate_detections(dets, gts, 1)
    as_dicts = evaluate_detections([dict(boxes=b, labels=lab, scores=s) for b, lab, s in dets],
                                   [dict(boxes=b, labels=lab, difficult=d) for b, lab, d in gts], 1)
    as_records = evaluate_detections([Detections(*d) for d in dets],
                                     [Sample(None, b, lab, d, str(i)) for i, (b, lab, d) in enumerate(gts)], 1)
    no_difficult = evaluate_detections([list(d) for d in dets], [(b, lab) for b, lab, _ in gts], 1)
    for r in (as_dicts, as_records, no_difficult):
        assert r["ap"] == ref["ap"] and r["ap_area"] == ref["ap_area"]


def test_empty_images_and_empty_dataset():
    r = evaluate_detections([det([], [], []), det([], [], [])], [gt([], []), gt([A], [1])], 1)
    assert r["ap"][1] == 0.0 and r["num_gt"][1] == 1
    r = evaluate_detections([], [], 2)
    assert math.isnan(r["map"])


@pytest.mark.parametrize("mutate,match", [
    (lambda d, g: (d[:1], g), "detections has 1 images but ground_truths has 2"),
    (lambda d, g: ([det([A], [0], [0.5]), d[1]], g), r"detections\[0\].labels must lie in 1..2"),
    (lambda d, g: ([det([A], [3], [0.5]), d[1]], g), r"detections\[0\].labels must lie in 1..2"),
    (lambda d, g: ([det([A], [1], [np.nan]), d[1]], g), r"detections\[0\].scores holds NaN"),
    (lambda d, g: ([(np.zeros((1, 3)), [1], [0.5]), d[1]], g), r"detections\[0\].boxes must have shape"),
    (lambda d, g: ([(np.array([A], float), [1], [0.5, 0.4]), d[1]], g), r"detections\[0\].scores must have shape"),
    (lambda d, g: (d, [gt([[10, 0, 0, 10]], [1]), g[1]]), r"ground_truths\[0\].boxes must be xyxy"),
    (lambda d, g: (d, [(np.array([A], float), np.array([1]), np.array([True, False])), g[1]]),
     r"ground_truths\[0\].difficult"),
    (lambda d, g: (d, [{"boxes": np.array([A], float)}, g[1]]), r"ground_truths\[0\] is a mapping without"),
    (lambda d, g: ([42, d[1]], g), r"detections\[0\] must be a tuple"),
])
def test_bad_input_names_the_argument(mutate, match):
    dets = [det([A], [1], [0.9]), det([B], [2], [0.5])]
    gts = [gt([A], [1]), gt([B], [2])]
    d, g = mutate(dets, gts)
    with pytest.raises(ValueError, match=match):
        evaluate_detections(d, g, 2)


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_detections([], [], 0)
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_detections([], [], 1, iou_threshold=0)


# -- COCO ------------------------------------------------------------------------------------------
class FakeCocoDataset:   # as minissd.data.COCODataset: a list indexed by label, 0 unused
    label_to_category = [None, 18, 44]


class FakeShapesDataset:   # no COCO ids: the label is the category
    class_names = ("circle", "square")


def test_coco_results_format_and_category_mapping(tmp_path):
    dets = [det([[10, 20, 40, 60]], [2], [0.75]), det([], [], []), det([A, B], [1, 2], [0.5, 0.25])]
    ids = ["139", "285", "632"]
    path = tmp_path / "sub" / "results.json"
    assert write_coco_results(path, dets, ids, {1: 18, 2: 44}) == 3
    records = json.loads(path.read_text())
    assert records[0] == {"image_id": 139, "category_id": 44, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.75}
    assert [r["image_id"] for r in records] == [139, 632, 632]
    assert [r["category_id"] for r in records] == [44, 18, 44]
    for mapping in ([None, 18, 44], lambda lab: {1: 18, 2: 44}[lab], FakeCocoDataset()):
        assert [r["category_id"] for r in coco_results(dets, ids, mapping)] == [44, 18, 44]
    for mapping in (None, FakeShapesDataset()):
        assert [r["category_id"] for r in coco_results(dets, ["a", "b", "c"], mapping)] == [2, 1, 2]
    assert coco_results(dets, ["a", "b", "c"])[0]["image_id"] == "a"
    with pytest.raises(ValueError, match="image_ids"):
        coco_results(dets, ids[:2])


def test_coco_evaluate_without_pycocotools_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match=r"pip install 'minissd\[coco\]'"):
        coco_evaluate([det([A], [1], [0.9])], [gt([A], [1])], ["1"], ["a"])


def test_coco_evaluate_with_pycocotools():
    pytest.importorskip("pycocotools")
    gts = [gt([[0, 0, 100, 100], [200, 200, 260, 300]], [1, 2]), gt([[10, 10, 50, 90]], [1])]
    perfect = [det(g[0], g[1], np.linspace(0.9, 0.5, len(g[0]))) for g in gts]
    r = coco_evaluate(perfect, gts, ["a", "b"], ["cat", "dog"], sizes=[(400, 400), (100, 100)])
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0)
    # one box shifted to IoU 0.6 (100x100 vs 100x100 offset by 25): counts at 0.5, not at 0.75
    shifted = [det([[25, 0, 125, 100], [200, 200, 260, 300]], [1, 2], [0.9, 0.8]), perfect[1]]
    r = coco_evaluate(shifted, gts, None, ["cat", "dog"])
    assert r["AP50"] == pytest.approx(1.0) and r["AP75"] < 1.0
    assert coco_evaluate([det([], [], []), det([], [], [])], gts, None, ["cat", "dog"])["AP"] == 0.0

"""Tests added after mutation testing of minissd/metrics.py (tests/mutation/metrics.md): each pins a behaviour
that tests/test_metrics.py and tests/test_ap_conventions.py left open (a mutant survived them)."""
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from minissd.metrics import (
    COCO_STAT_NAMES,
    coco_evaluate,
    coco_evaluate_file,
    coco_results,
    evaluate_detections,
    match_detections,
    voc_ap,
)
from test_metrics import FAR, A, B, det, gt  # noqa: E402  (the boxes and builders of the metrics tests)


def _grid(n):
    """n disjoint 10 x 10 boxes on a row, 20 pixels apart."""
    return [[20 * i, 0, 20 * i + 10, 10] for i in range(n)]


# -- voc_ap ----------------------------------------------------------------------------------------
def test_voc_ap_default_is_the_11_point_ap():
    """Without use_07_metric, voc_ap is VOC2007's 11-point AP (6/11 here), not the area (1/2)."""
    assert voc_ap([0.5], [1.0]) == pytest.approx(6 / 11, abs=1e-15)
    assert voc_ap([0.5], [1.0], False) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("rec,prec,name", [([0.5, None], [1.0, 0.5], "recall"),
                                           ([0.5, 1.0], [1.0, None], "precision")])
def test_voc_ap_reads_a_missing_value_as_nan_and_names_the_array(rec, prec, name):
    """None in recall or precision becomes NaN (float64), refused with a ValueError naming which array."""
    with pytest.raises(ValueError, match=rf"^voc_ap: {name} must hold finite values in \[0, 1\]$"):
        voc_ap(rec, prec)


def test_voc_ap_caffe_reaches_a_threshold_equal_to_the_recall():
    """Caffe's ComputeAP: a recall of exactly 0.5 (exact in float32) reaches t = 0.5: 6 of 11 thresholds."""
    assert voc_ap([0.5], [1.0], True, "caffe") == pytest.approx(6 / 11, abs=1e-6)
    assert voc_ap([1.0], [1.0], True, "caffe") == pytest.approx(1.0, abs=1e-6)   # 11 float32 elevenths


def py_faster_rcnn_area_ap(rec, prec):
    """voc_eval.py's area AP (py-faster-rcnn; VOCap.m of the VOC2010+ devkit), transcribed."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def test_voc_ap_area_is_bitwise_the_reference_evaluator(rng):
    """The area AP sums exactly the reference's terms in its order, so it is equal to the last bit (long
    curves, some reaching recall 1): extra zero-width terms would regroup NumPy's pairwise summation."""
    for _ in range(300):
        k = int(rng.integers(1, 400))
        hits = rng.random(k) < rng.uniform(0.2, 0.9)
        n = int(hits.sum()) + int(rng.integers(0, 3))
        if n == 0:
            continue
        tp = np.cumsum(hits, dtype=np.float64)
        rec, prec = tp / n, tp / np.arange(1, k + 1)
        assert voc_ap(rec, prec, False) == py_faster_rcnn_area_ap(rec, prec)


# -- match_detections ------------------------------------------------------------------------------
def test_match_detections_returns_boolean_masks_in_every_branch():
    """tp and fp are bool arrays (callers use ~fp, tp & x) with no detections, no boxes and greedy matching."""
    none = np.zeros((0, 4))
    for d, g, devkit in ((none, np.array([A], float), True), (np.array([A], float), none, True),
                         (np.array([A, FAR], float), np.array([A], float), False)):
        tp, fp = match_detections(d, g, np.zeros(len(g), bool), devkit_matching=devkit)
        assert tp.dtype == np.bool_ and fp.dtype == np.bool_
    tp, fp = match_detections(np.array([A], float), none, np.zeros(0, bool))
    assert tp.tolist() == [False] and fp.tolist() == [True]


def test_greedy_matching_takes_each_box_once_and_counts_misses():
    """Greedy (COCO-style): a second detection on an already taken box is a false positive, a miss is one."""
    d = np.array([A, A, FAR, B], float)
    tp, fp = match_detections(d, np.array([A, B], float), np.zeros(2, bool), devkit_matching=False)
    assert tp.tolist() == [True, False, False, True]
    assert fp.tolist() == [False, True, True, False]


def test_greedy_matching_threshold_is_inclusive():
    """Greedy: IoU exactly equal to the threshold (50 / 100) is a hit, as in the devkit rule."""
    d = np.array([[0, 0, 10, 5]], float)
    tp, fp = match_detections(d, np.array([A], float), np.zeros(1, bool), 0.5, devkit_matching=False)
    assert tp.tolist() == [True] and fp.tolist() == [False]


# -- input reading (_fields, _as_boxes, _as_labels, _prepare) --------------------------------------
def test_ground_truth_without_difficult_as_mapping_or_record():
    """'difficult' is optional for a mapping and for a non-tuple record with boxes and labels."""
    dets = [det([A, FAR], [1, 1], [0.9, 0.8])]
    ref = evaluate_detections(dets, [gt([A], [1])], 1)
    as_dict = evaluate_detections(dets, [{"boxes": [A], "labels": [1]}], 1)
    as_record = evaluate_detections(dets, [SimpleNamespace(boxes=[A], labels=[1])], 1)
    for r in (as_dict, as_record):
        assert r["ap"] == ref["ap"] and r["tp"][1].tolist() == [True, False]


def test_detection_mapping_without_scores_names_the_key():
    """Only a ground truth's 'difficult' may be missing; a detection mapping without scores is refused by name."""
    with pytest.raises(ValueError, match=r"detections\[0\] is a mapping without key\(s\) \['scores'\]"):
        evaluate_detections([{"boxes": [A], "labels": [1]}], [gt([A], [1])], 1)


@pytest.mark.parametrize("item", [(np.array([A], float),), (np.array([A], float), [1], [False], "extra")])
def test_ground_truth_tuple_of_wrong_length_is_refused(item):
    """A ground truth tuple has 2 or 3 entries; 1 or 4 is refused with the message naming the image."""
    with pytest.raises(ValueError, match=r"ground_truths\[0\] must be a tuple"):
        evaluate_detections([det([A], [1], [0.9])], [item], 1)


def test_missing_coordinate_or_score_is_nan_and_refused():
    """None among box coordinates or scores is read as NaN (float64) and refused by name."""
    with pytest.raises(ValueError, match=r"detections\[0\]\.boxes holds NaN"):
        evaluate_detections([([[0, 0, None, 10]], [1], [0.9])], [gt([A], [1])], 1)
    with pytest.raises(ValueError, match=r"detections\[0\]\.scores holds NaN"):
        evaluate_detections([([A, B], [1, 1], [0.9, None])], [gt([A], [1])], 1)


def test_scores_none_is_a_shape_error():
    """scores=None is reported as a missing scores array, not as a NaN score."""
    with pytest.raises(ValueError, match=r"detections\[0\]\.scores must have shape \(1,\), got None"):
        evaluate_detections([{"boxes": [A], "labels": [1], "scores": None}], [gt([A], [1])], 1)


def test_column_shaped_scores_and_difficult_are_flattened():
    """scores of shape (K, 1) and difficult of shape (G, 1) are read as (K,) and (G,)."""
    ref = evaluate_detections([det([A, B], [1, 1], [0.9, 0.8])], [gt([A, B], [1, 1], [False, True])], 1)
    r = evaluate_detections([(np.array([A, B], float), [1, 1], np.array([[0.9], [0.8]]))],
                            [(np.array([A, B], float), [1, 1], np.array([[False], [True]]))], 1)
    assert r["ap"] == ref["ap"] and r["num_gt"] == {1: 1}
    assert r["tp"][1].tolist() == [True, False] and r["fp"][1].tolist() == [False, False]


def test_empty_image_as_plain_empty_lists():
    """An image without detections or boxes may be given as plain empty lists (shape (0,))."""
    r = evaluate_detections([([], [], []), det([A], [1], [0.9])], [([], []), gt([A], [1])], 1)
    assert r["ap"][1] == 1.0 and r["num_det"][1] == 1


def test_empty_labels_of_any_shape_or_dtype_when_there_are_no_boxes():
    """With no boxes, the labels only have to be empty: (0, 1) or object dtype is fine."""
    for labels in (np.zeros((0, 1)), np.array([], dtype=object)):
        r = evaluate_detections([(np.zeros((0, 4)), labels, [])], [(np.zeros((0, 4)), labels)], 1)
        assert r["num_det"][1] == 0 and r["num_gt"][1] == 0


@pytest.mark.parametrize("boxes,labels", [(np.zeros((0, 4)), [1]), (np.array([A], float), [])])
def test_labels_must_match_the_number_of_boxes(boxes, labels):
    """A label without a box, or a box without a label, is refused (not silently dropped)."""
    n = len(boxes)
    with pytest.raises(ValueError, match=rf"detections\[0\]\.labels must have shape \({n},\)"):
        evaluate_detections([(boxes, labels, np.full(n, 0.5))], [gt([A], [1])], 1)


def test_integral_float_labels_are_accepted_others_refused():
    """Labels 1.0, 2.0 (float dtype) read as 1, 2; 1.5 and boolean labels are refused."""
    r = evaluate_detections([(np.array([A, B], float), np.array([1.0, 2.0]), [0.9, 0.8])],
                            [(np.array([A, B], float), np.array([1.0, 2.0]))], 2)
    assert r["ap"] == {1: 1.0, 2: 1.0} and r["num_det"] == {1: 1, 2: 1} and r["num_gt"] == {1: 1, 2: 1}
    for bad, dtype in (([1.5], "float64"), ([True], "bool")):
        with pytest.raises(ValueError, match=rf"detections\[0\]\.labels must hold integer labels, got dtype {dtype}"):
            evaluate_detections([(np.array([A], float), np.array(bad), [0.9])], [gt([A], [1])], 2)


@pytest.mark.parametrize("num_classes", [True, 2.0, "2"])
def test_num_classes_must_be_an_integer(num_classes):
    """num_classes True, 2.0 or '2' is refused with a ValueError naming it."""
    with pytest.raises(ValueError, match="num_classes must be the number of object classes"):
        evaluate_detections([det([A], [1], [0.9])], [gt([A], [1])], num_classes)


def test_degenerate_and_wide_boxes_are_accepted():
    """x1 == x2 or y1 == y2 is a valid (zero-area, IoU 0) box; a box wider than it is tall is valid."""
    wide = [0, 0, 40, 10]
    flat = [[5, 5, 5, 9], [5, 5, 9, 5]]
    r = evaluate_detections([det(flat + [wide], [1, 1, 1], [0.9, 0.8, 0.7])],
                            [gt(flat + [wide], [1, 1, 1])], 1)
    assert r["tp"][1].tolist() == [False, False, True] and r["num_gt"][1] == 3


@pytest.mark.parametrize("side", ["detections", "ground_truths"])
def test_flipped_y_is_refused(side):
    """y2 < y1 is refused for detections and for ground truths, naming the side."""
    flipped = [0, 10, 10, 0]
    d, g = [det([A], [1], [0.9])], [gt([A], [1])]
    if side == "detections":
        d = [det([flipped], [1], [0.9])]
    else:
        g = [gt([flipped], [1])]
    with pytest.raises(ValueError, match=rf"{side}\[0\]\.boxes must be xyxy with x2 >= x1 and y2 >= y1"):
        evaluate_detections(d, g, 1)


def test_ground_truth_errors_name_ground_truths():
    """Bad ground truth boxes and labels are reported as ground_truths[i].boxes / .labels."""
    with pytest.raises(ValueError, match=r"ground_truths\[0\]\.boxes must have shape"):
        evaluate_detections([det([A], [1], [0.9])], [(np.zeros((1, 3)), [1])], 1)
    with pytest.raises(ValueError, match=r"ground_truths\[0\]\.labels must lie in 1\.\.1"):
        evaluate_detections([det([A], [1], [0.9])], [gt([A], [2])], 1)


# -- evaluate_detections ---------------------------------------------------------------------------
def test_evaluate_detections_default_and_passed_matching_rule():
    """devkit_matching defaults to the devkit rule (a duplicate on the taken best box) and is passed through."""
    a, b = [0, 0, 10, 10], [5, 0, 15, 10]
    second = [2, 0, 12, 10]           # best IoU with a (taken), 7/13 with b (free)
    dets, gts = [det([a, second], [1, 1], [0.9, 0.8])], [gt([a, b], [1, 1])]
    assert evaluate_detections(dets, gts, 1)["tp"][1].tolist() == [True, False]
    assert evaluate_detections(dets, gts, 1, devkit_matching=True)["tp"][1].tolist() == [True, False]
    assert evaluate_detections(dets, gts, 1, devkit_matching=False)["tp"][1].tolist() == [True, True]


def test_iou_threshold_one_is_allowed_and_above_one_refused():
    """iou_threshold lies in (0, 1]: 1 counts only exact boxes; 1.5 is refused."""
    r = evaluate_detections([det([A, [0, 0, 10, 9]], [1, 1], [0.9, 0.8])], [gt([A, [0, 0, 10, 9.5]], [1, 1])],
                            1, iou_threshold=1.0)
    assert r["tp"][1].tolist() == [True, False] and r["iou_threshold"] == 1.0
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_detections([], [], 1, iou_threshold=1.5)


def test_equal_scores_keep_detection_order_within_an_image():
    """Ties within an image rank in detection order (a stable sort), here 30 detections on two score levels."""
    n = 30
    scores = [0.5, 0.5, 0.4] * 10
    hits = [i % 4 == 1 for i in range(n)]
    boxes = _grid(n)
    dets = [det([boxes[i] if hits[i] else [1000, 1000, 1010, 1010] for i in range(n)], [1] * n, scores)]
    r = evaluate_detections(dets, [gt(boxes, [1] * n)], 1)
    order = sorted(range(n), key=lambda i: -scores[i])          # Python's sort is stable
    assert r["tp"][1].tolist() == [hits[i] for i in order]


def test_equal_scores_keep_image_order_across_images():
    """Ties across images rank in image order (a stable sort), here 30 images of one detection each."""
    n = 30
    scores = [0.5, 0.5, 0.4] * 10
    hits = [i % 4 == 1 for i in range(n)]
    dets = [det([A if hits[i] else FAR], [1], [scores[i]]) for i in range(n)]
    r = evaluate_detections(dets, [gt([A], [1]) for _ in range(n)], 1)
    order = sorted(range(n), key=lambda i: -scores[i])
    assert r["tp"][1].tolist() == [hits[i] for i in order]


def test_class_without_detections_and_class_without_objects():
    """No detections: num_det 0 and empty bool tp/fp; no objects: recall is NaN, one per detection."""
    r = evaluate_detections([det([A, FAR], [1, 3], [0.9, 0.5])], [gt([A, B], [1, 2])], 3)
    assert r["num_det"][2] == 0 and r["scores"][2].size == 0
    assert r["tp"][2].dtype == np.bool_ and r["fp"][2].dtype == np.bool_ and r["tp"][2].size == 0
    assert r["recall"][3].dtype == np.float64 and r["recall"][3].shape == (1,) and np.isnan(r["recall"][3]).all()
    assert r["precision"][3].tolist() == [0.0]


def test_evaluate_detections_warns_about_nothing():
    """No NumPy warning (mean of an empty list, deprecated finfo(None)) for classes without objects."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate_detections([det([A, FAR], [1, 2], [0.9, 0.5])], [gt([A], [1])], 2)
        assert r["ap"][1] == 1.0 and math.isnan(r["ap"][2])
        assert math.isnan(evaluate_detections([det([A], [1], [0.9])], [gt([], [])], 1)["map"])


def test_evaluate_detections_reports_its_settings_and_every_convention():
    """The result carries iou_threshold, use_07_metric and ap_07_by_thresholds (per class, per convention)."""
    r = evaluate_detections([det([A], [1], [0.9])], [gt([A], [1])], 1)
    assert r["iou_threshold"] == 0.5 and r["use_07_metric"] is True
    by = r["ap_07_by_thresholds"]
    assert sorted(by) == ["caffe", "exact", "matlab", "python"]
    assert all(by[name] == {1: pytest.approx(1.0, abs=1e-6)} for name in by)   # Caffe's sum is in float32
    assert evaluate_detections([], [], 1, use_07_metric=False)["use_07_metric"] is False


# -- coco_results ----------------------------------------------------------------------------------
def test_coco_results_reads_mappings_and_records():
    """coco_results takes mappings with boxes/labels/scores keys and records with those attributes."""
    ref = coco_results([det([A], [1], [0.5])], [7])
    assert coco_results([{"boxes": [A], "labels": [1], "scores": [0.5]}], [7]) == ref
    assert coco_results([SimpleNamespace(boxes=[A], labels=[1], scores=[0.5])], [7]) == ref
    assert ref == [{"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.5}]


def test_coco_results_errors_name_the_detection():
    """Bad entries are reported as detections[i], detections[i].boxes, and a length mismatch as such."""
    with pytest.raises(ValueError, match=r"detections\[1\] must be a tuple"):
        coco_results([det([A], [1], [0.5]), 42], [1, 2])
    with pytest.raises(ValueError, match=r"detections\[0\]\.boxes must have shape"):
        coco_results([(np.zeros((1, 3)), [1], [0.5])], [1])
    with pytest.raises(ValueError, match=r"detections\[0\]: boxes, labels and scores must have one length"):
        coco_results([(np.array([A, B], float), [1, 2], [0.5])], [1])


def test_coco_results_refuses_scores_that_json_cannot_hold():
    """A NaN, inf or missing (None) score is refused: json.dumps would write NaN, which is not JSON."""
    for bad in (np.nan, np.inf, None):
        with pytest.raises(ValueError, match=r"detections\[0\]\.scores holds NaN or inf"):
            coco_results([(np.array([A, B], float), [1, 2], [0.5, bad])], [1])


def test_coco_results_flattens_column_labels_and_scores():
    """labels and scores of shape (K, 1) are read as (K,)."""
    got = coco_results([(np.array([A, B], float), np.array([[1], [2]]), np.array([[0.5], [0.25]]))], [3])
    assert [(r["category_id"], r["score"]) for r in got] == [(1, 0.5), (2, 0.25)]


def test_coco_results_rounds_boxes_to_3_and_scores_to_6_decimals():
    """bbox entries are rounded to 3 decimals (x, y, w, h), the score to 6."""
    r = coco_results([det([[10.12345, 20.56789, 40.98765, 60.43219]], [1], [0.123456789])], [1])[0]
    assert r["bbox"] == [10.123, 20.568, 30.864, 39.864]
    assert r["score"] == 0.123457


# -- coco_evaluate ---------------------------------------------------------------------------------
def test_coco_evaluate_boxes_areas_and_difficult():
    """Perfect detections of large boxes not at x == y: AP 1, APl 1, APs NaN (the only small box is
    difficult, i.e. crowd, and ignored although missed); labels give categories 1..C from num_classes."""
    pytest.importorskip("pycocotools")
    gts = [gt([[10, 30, 110, 130], [200, 50, 300, 160], [400, 400, 420, 420]], [1, 2, 1], [False, False, True])]
    dets = [det([[10, 30, 110, 130], [200, 50, 300, 160]], [1, 2], [0.9, 0.8])]
    r = coco_evaluate(dets, gts, num_classes=2)
    assert r["AP"] == pytest.approx(1.0) and r["APl"] == pytest.approx(1.0) and r["AR100"] == pytest.approx(1.0)
    assert math.isnan(r["APs"]) and math.isnan(r["APm"])
    one = coco_evaluate([det([[10, 30, 110, 130]], [1], [0.9])], [gt([[10, 30, 110, 130]], [1])], class_names=["a"])
    assert one["AP"] == pytest.approx(1.0)


def test_coco_evaluate_num_classes_bounds_the_labels():
    """num_classes=2 accepts label 2 and refuses label 3."""
    pytest.importorskip("pycocotools")
    g = [gt([[0, 0, 100, 100]], [2])]
    assert coco_evaluate([det([[0, 0, 100, 100]], [2], [0.9])], g, num_classes=2)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"labels must lie in 1\.\.2"):
        coco_evaluate([det([[0, 0, 100, 100]], [3], [0.9])], g, num_classes=2)


def test_coco_evaluate_zero_stays_zero():
    """A stat of exactly 0 (every detection wrong) is reported as 0.0, not NaN."""
    pytest.importorskip("pycocotools")
    r = coco_evaluate([det([[300, 300, 400, 400]], [1], [0.9])], [gt([[0, 0, 100, 100]], [1])], num_classes=1)
    assert r["AP"] == 0.0 and r["AP50"] == 0.0 and r["AR100"] == 0.0


def test_coco_evaluate_prints_only_when_verbose(capsys):
    """pycocotools' progress and summary table reach stdout with verbose=True only."""
    pytest.importorskip("pycocotools")
    args = ([det([A], [1], [0.9])], [gt([A], [1])])
    coco_evaluate(*args, num_classes=1)
    assert capsys.readouterr().out == ""
    coco_evaluate(*args, num_classes=1, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


# -- coco_evaluate_file ----------------------------------------------------------------------------
# Images 7, 42, 100; categories 18, 44, 90. Category 18: a large box in image 7 and one in image 42;
# category 44: a small (20 x 20) box in image 42; category 90: a large box in image 100.
BOX18_7, BOX18_42, BOX44, BOX90 = [10, 30, 110, 130], [50, 20, 150, 120], [200, 200, 220, 220], [0, 0, 100, 100]


def _write_instances(tmp_path):
    def ann(k, image_id, cat, xyxy):
        x1, y1, x2, y2 = xyxy
        return {"id": k, "image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 300, "width": 300} for i in (7, 42, 100)],
            "categories": [{"id": c, "name": f"c{c}"} for c in (18, 44, 90)],
            "annotations": [ann(1, 7, 18, BOX18_7), ann(2, 42, 18, BOX18_42), ann(3, 42, 44, BOX44),
                            ann(4, 100, 90, BOX90)]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _category_18_found():
    """Both category-18 boxes found exactly (label 1); nothing else detected."""
    return [det([BOX18_7], [1], [0.9]), det([BOX18_42], [1], [0.8]), det([], [], [])]


EXPECTED_18_44 = {"AP": 0.5, "AP50": 0.5, "AP75": 0.5, "APs": 0.0, "APm": math.nan, "APl": 1.0,
                  "AR1": 0.5, "AR10": 0.5, "AR100": 0.5, "ARs": 0.0, "ARm": math.nan, "ARl": 1.0}


def _assert_stats(got, expected):
    assert list(got) == list(COCO_STAT_NAMES)
    for name in COCO_STAT_NAMES:
        if math.isnan(expected[name]):
            assert math.isnan(got[name]), (name, got)
        else:
            assert got[name] == pytest.approx(expected[name], abs=1e-12), (name, got)


class _Dataset:   # as COCODataset: label_to_category indexed by label, entry 0 unused
    label_to_category = [None, 18, 44]


@pytest.mark.parametrize("mapping", [{1: 18, 2: 44}, [None, 18, 44], _Dataset()], ids=["dict", "list", "dataset"])
def test_coco_evaluate_file_scores_every_mapped_category(tmp_path, mapping):
    """Categories the mapping names count even without detections (44: AP 0), unmapped ones (90) do not:
    AP = mean(1, 0); APs = 0 (the small box is missed); APm = NaN (no medium box)."""
    pytest.importorskip("pycocotools")
    path = _write_instances(tmp_path)
    got = coco_evaluate_file(path, _category_18_found(), [7, 42, 100], mapping)
    _assert_stats(got, EXPECTED_18_44)


def test_coco_evaluate_file_without_mapping_scores_the_files_categories_in_the_given_images(tmp_path):
    """label_to_category=None: labels are category ids and every category of the file counts, but only in
    the images given: with image 100 left out, category 90 has no object there and drops out."""
    pytest.importorskip("pycocotools")
    path = _write_instances(tmp_path)
    dets = [det([BOX18_7], [18], [0.9]), det([BOX18_42], [18], [0.8])]
    _assert_stats(coco_evaluate_file(path, dets, [7, 42]), EXPECTED_18_44)
    every = coco_evaluate_file(path, dets + [det([], [], [])], [7, 42, 100])
    assert every["AP"] == pytest.approx(1 / 3, abs=1e-12) and every["APl"] == pytest.approx(0.5, abs=1e-12)


def test_coco_evaluate_file_with_a_callable_mapping(tmp_path):
    """A callable label_to_category maps the detections' labels; only their categories are then named."""
    pytest.importorskip("pycocotools")
    path = _write_instances(tmp_path)
    got = coco_evaluate_file(path, _category_18_found(), [7, 42, 100], lambda lab: {1: 18, 2: 44}[lab])
    assert got["AP"] == pytest.approx(1.0) and math.isnan(got["APs"])


def test_coco_evaluate_file_writes_results_and_handles_no_detections(tmp_path):
    """results_path receives the COCO results json; with no detection every number is 0."""
    pytest.importorskip("pycocotools")
    path = _write_instances(tmp_path)
    out = tmp_path / "results.json"
    coco_evaluate_file(path, _category_18_found(), ["7", 42, 100], {1: 18, 2: 44}, results_path=out)
    assert json.loads(out.read_text()) == [
        {"image_id": 7, "category_id": 18, "bbox": [10.0, 30.0, 100.0, 100.0], "score": 0.9},
        {"image_id": 42, "category_id": 18, "bbox": [50.0, 20.0, 100.0, 100.0], "score": 0.8}]
    empty = coco_evaluate_file(path, [det([], [], [])] * 3, [7, 42, 100], {1: 18, 2: 44})
    assert empty == {name: 0.0 for name in COCO_STAT_NAMES}


def test_coco_evaluate_file_refuses_unknown_ids_and_files(tmp_path):
    """Unknown image ids (also a non-numeric one among integers), category ids and files are named."""
    pytest.importorskip("pycocotools")
    path = _write_instances(tmp_path)
    dets = _category_18_found()
    with pytest.raises(ValueError, match=r"image_ids: 8 is not an image id of .*instances\.json \(2 unknown"):
        coco_evaluate_file(path, dets + [det([], [], [])], [7, 10, 8, 100])   # the smallest unknown, not "10"
    with pytest.raises(ValueError, match=r"image_ids: 'zz' is not an image id"):
        coco_evaluate_file(path, dets, [7, "zz", 100])
    with pytest.raises(ValueError, match=r"category id 45 \(from label_to_category or the labels\)"):
        coco_evaluate_file(path, dets, [7, 42, 100], {1: 18, 2: 45})
    with pytest.raises(ValueError, match=r"annotations: .*none\.json does not exist"):
        coco_evaluate_file(tmp_path / "none.json", dets, [7, 42, 100])


def test_coco_evaluate_file_prints_only_when_verbose(tmp_path, capsys):
    """pycocotools' loading messages and summary reach stdout with verbose=True only."""
    pytest.importorskip("pycocotools")
    path = _write_instances(tmp_path)
    coco_evaluate_file(path, _category_18_found(), [7, 42, 100], {1: 18, 2: 44})
    assert capsys.readouterr().out == ""
    coco_evaluate_file(path, _category_18_found(), [7, 42, 100], {1: 18, 2: 44}, verbose=True)
    out = capsys.readouterr().out
    assert "loading annotations" in out and "Average Precision" in out

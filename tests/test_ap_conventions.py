"""The four ways evaluators compute VOC2007's 11 recall thresholds (minissd.metrics.AP_THRESHOLDS).

One ranked list where recall lands exactly on 0.3 and on 0.7 separates all four; each convention is
also checked against a literal transcription of the evaluator it names.
"""
import numpy as np
import pytest

from minissd.metrics import AP_CONVENTIONS, AP_THRESHOLDS, evaluate_detections, voc_ap

# Ten objects; detections in rank order: 3 hits, 2 misses, 4 hits, 1 miss. Recall after each rank is
# tp / 10: exactly 0.3 after rank 3 (precision 1) and exactly 0.7 after rank 9 (precision 7/9).
HITS = [1, 1, 1, 0, 0, 1, 1, 1, 1, 0]
EXPECTED = {"exact": 64 / 99, "python": 55 / 99, "matlab": 62 / 99, "caffe": 57 / 99}


def _curve():
    tp = np.cumsum(HITS, dtype=np.float64)
    return tp / 10, tp / np.arange(1, 11)


def py_faster_rcnn_ap(rec, prec):
    """voc_eval.py's 11-point loop (py-faster-rcnn), transcribed."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
        ap = ap + p / 11.0
    return ap


def caffe_ap(tp_cumsum, num_pos):
    """bbox_util.cpp ComputeAP("11point"), transcribed with float32 where Caffe has float."""
    num = len(tp_cumsum)
    rec = [np.float32(t) / np.float32(num_pos) for t in tp_cumsum]
    prec = [np.float32(t) / np.float32(i + 1) for i, t in enumerate(tp_cumsum)]
    max_precs = [np.float32(0)] * 11
    start_idx = num - 1
    for j in range(10, -1, -1):
        for i in range(start_idx, -1, -1):
            if float(rec[i]) < j / 10.0:
                start_idx = i
                if j > 0:
                    max_precs[j - 1] = max_precs[j]
                break
            if max_precs[j] < prec[i]:
                max_precs[j] = prec[i]
    ap = np.float32(0)
    for j in range(10, -1, -1):
        ap += max_precs[j] / np.float32(11)
    return float(ap)


def test_the_threshold_values():
    assert AP_CONVENTIONS == ("exact", "python", "matlab", "caffe")
    assert AP_THRESHOLDS["exact"][3] == 0.3 and AP_THRESHOLDS["exact"][7] == 0.7
    assert AP_THRESHOLDS["python"] == tuple(np.arange(0.0, 1.1, 0.1).tolist())
    assert AP_THRESHOLDS["python"][3] == 0.30000000000000004
    assert AP_THRESHOLDS["python"][6] == 0.6000000000000001 and AP_THRESHOLDS["python"][7] == 0.7000000000000001
    # MATLAB 0:0.1:1, computed from both ends: forward 0.1 * k up to the middle, backward 1 - 0.1 * (10 - k).
    assert AP_THRESHOLDS["matlab"] == (0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    # Caffe compares float32 recalls with double k / 10: 0.3f reaches 0.3, 0.7f and 0.9f fall short.
    # (float() first: NumPy 2 would compare a float32 with a Python float in float32.)
    assert float(np.float32(0.3)) > 0.3 and float(np.float32(0.7)) < 0.7 and float(np.float32(0.9)) < 0.9


def test_a_recall_of_exactly_three_tenths_separates_the_conventions():
    rec, prec = _curve()
    assert rec[2] == 0.3 and rec[8] == 0.7
    got = {name: voc_ap(rec, prec, True, name) for name in AP_CONVENTIONS}
    for name, value in EXPECTED.items():
        assert got[name] == pytest.approx(value, abs=1e-7 if name == "caffe" else 1e-12), (name, got)
    assert len({round(v, 6) for v in got.values()}) == 4
    assert got["python"] == pytest.approx(py_faster_rcnn_ap(rec, prec), abs=1e-15)
    assert got["caffe"] == caffe_ap(np.cumsum(HITS), 10)
    # The area AP has no thresholds.
    assert voc_ap(rec, prec, False) == voc_ap(rec, prec, False, "python")


def test_conventions_agree_when_no_recall_sits_on_a_threshold(rng):
    for _ in range(50):
        hits = rng.random(30) < 0.6
        n = 37   # recalls k / 37 never equal a tenth (other than 0 and 1 at most)
        tp = np.cumsum(hits, dtype=np.float64)
        rec, prec = tp / n, tp / np.arange(1, 31)
        values = [voc_ap(rec, prec, True, name) for name in AP_CONVENTIONS]
        assert max(values) - min(values) < 1e-6
        assert values[AP_CONVENTIONS.index("python")] == pytest.approx(py_faster_rcnn_ap(rec, prec), abs=1e-15)
        assert values[AP_CONVENTIONS.index("caffe")] == pytest.approx(caffe_ap(tp.astype(int), n), abs=1e-7)


def test_evaluate_detections_reports_every_convention():
    far = [100, 100, 110, 110]
    ground_truths, detections = [], []
    for i, hit in enumerate(HITS):   # image i: one object; one detection, on it or far away
        box = [0, 0, 10, 10]
        ground_truths.append((np.array([box], float), np.array([1])))
        detections.append((np.array([box if hit else far], float), np.array([1]), np.array([1.0 - i / 20])))
    r = evaluate_detections(detections, ground_truths, num_classes=1)
    assert r["thresholds"] == "exact" and r["ap_07"][1] == pytest.approx(64 / 99)
    for name, value in EXPECTED.items():
        assert r["map_07_by_thresholds"][name] == pytest.approx(value, abs=1e-7)
    r = evaluate_detections(detections, ground_truths, num_classes=1, thresholds="python")
    assert r["map_07"] == r["map"] == pytest.approx(5 / 9) and r["thresholds"] == "python"
    with pytest.raises(ValueError, match=r"thresholds must be one of \('exact', 'python', 'matlab', 'caffe'\)"):
        evaluate_detections(detections, ground_truths, num_classes=1, thresholds="voc")
    with pytest.raises(ValueError, match="thresholds must be one of"):
        voc_ap([0.5], [1.0], True, "Python")

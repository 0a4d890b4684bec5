"""COCO reader on fixture files built here, every bad case included."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from minissd.data import BadDataWarning, COCODataset, open_dataset

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}, {"id": 9, "name": "boat"}]


def make_coco(tmp_path, annotations, images=None, categories=CATEGORIES, raw=None):
    """Write images/ (40 x 30 JPEGs) and instances.json; returns (json path, image dir)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    if images is None:
        images = [{"id": 10, "file_name": "a.jpg", "width": 40, "height": 30},
                  {"id": 20, "file_name": "b.jpg", "width": 40, "height": 30}]
    for img in images:
        pixels = np.zeros((img["height"], img["width"], 3), np.uint8)
        Image.fromarray(pixels).save(image_dir / img["file_name"])
    path = tmp_path / "instances.json"
    text = raw if raw is not None else json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}, indent=1)
    path.write_text(text)
    return str(path), str(image_dir)


def _ann(k, image_id, category, bbox, crowd=0):
    return {"id": k, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": crowd}


def test_categories_contiguous_xywh_to_xyxy_and_empty_images(tmp_path):
    ann, images = make_coco(tmp_path, [_ann(1, 10, 9, [2, 3, 10, 5]), _ann(2, 10, 1, [0, 0, 40, 30]),
                                       _ann(3, 10, 5, [1.5, 2.5, 3, 4])])
    ds = COCODataset(ann, images)
    assert ds.class_names == ("person", "airplane", "boat") and ds.label_to_category == [None, 1, 5, 9]
    s = ds.get(0)
    assert s.image.shape == (30, 40, 3) and s.image_id == "10"
    np.testing.assert_array_equal(s.boxes, [[2, 3, 12, 8], [0, 0, 40, 30], [1.5, 2.5, 4.5, 6.5]])
    assert s.labels.tolist() == [3, 1, 2] and s.labels.dtype == np.int64
    empty = ds.get(1)  # image 20 has no annotations: still a sample
    assert empty.boxes.shape == (0, 4) and empty.image_id == "20"
    with pytest.warns(BadDataWarning, match=r"dropped 1 objects of classes not in class_names \(1 'airplane'\)"):
        subset = COCODataset(ann, images, class_names=["boat", "person"], on_unknown_class="drop")
    assert subset.get(0).labels.tolist() == [1, 2] and subset.label_to_category == [None, 9, 1]


def test_crowd_flag_and_training_split(tmp_path):
    ann, images = make_coco(tmp_path, [_ann(1, 10, 1, [2, 3, 10, 5]), _ann(2, 10, 1, [5, 5, 10, 10], crowd=1)])
    kept = COCODataset(ann, images).get(0)
    assert kept.difficult.tolist() == [False, True]
    assert COCODataset(ann, images, keep_crowd=False).get(0).difficult.tolist() == [False]
    assert len(open_dataset(f"coco:{ann}:{images}", split="train").get(0).labels) == 1
    assert len(open_dataset(f"coco:{ann}:{images}", split="val").get(0).labels) == 2
    with pytest.raises(ValueError, match="spec"):
        open_dataset(f"coco:{ann}")


def test_bad_boxes_drop_clip_error(tmp_path):
    anns = [_ann(1, 10, 1, [30, 20, 15, 5]),   # x2 = 45 > 40
            _ann(2, 10, 1, [5, 5, 0, 4]),      # zero width
            _ann(3, 10, 1, [5, 5, -3, 4]),     # negative width: inverted
            _ann(4, 20, 1, [1, 1, 2, 2])]
    ann, images = make_coco(tmp_path, anns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = COCODataset(ann, images)
    bad = [w for w in caught if issubclass(w.category, BadDataWarning)]
    assert len(bad) == 1 and "dropped 3 bad boxes" in str(bad[0].message)
    assert len(ds.get(0).labels) == 0 and len(ds.get(1).labels) == 1
    with pytest.warns(BadDataWarning, match="clipped 1"):
        clipped = COCODataset(ann, images, on_bad_box="clip")
    np.testing.assert_array_equal(clipped.get(0).boxes, [[30, 20, 40, 25]])
    with pytest.raises(ValueError, match=r"instances\.json, annotations\[0\] \(id 1\).*outside the image"):
        COCODataset(ann, images, on_bad_box="error")
    with pytest.raises(ValueError, match="on_bad_box"):
        COCODataset(ann, images, on_bad_box="ignore")


def test_unknown_category_and_image(tmp_path):
    ann, images = make_coco(tmp_path, [_ann(7, 10, 3, [1, 1, 2, 2])])
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 7\): category_id 3 is not in 'categories'"):
        COCODataset(ann, images)
    ann, images = make_coco(tmp_path, [_ann(7, 99, 1, [1, 1, 2, 2])])
    with pytest.raises(ValueError, match="image_id 99 is not in 'images'"):
        COCODataset(ann, images)
    ann, images = make_coco(tmp_path, [_ann(7, 10, 5, [1, 1, 2, 2])])
    with pytest.raises(ValueError, match="'airplane' is not in class_names"):
        COCODataset(ann, images, class_names=["person"])
    with pytest.raises(ValueError, match="class_names"):
        COCODataset(ann, images, class_names=["zebra"])


def test_malformed_json_names_line_and_column(tmp_path):
    ann, images = make_coco(tmp_path, [], raw='{"images": [],\n  "categories": [,]}')
    with pytest.raises(ValueError, match=r"instances\.json: malformed JSON at line 2, column 18"):
        COCODataset(ann, images)
    ann, images = make_coco(tmp_path, [], raw='[1, 2]')
    with pytest.raises(ValueError, match="COCO instances object"):
        COCODataset(ann, images)
    ann, images = make_coco(tmp_path, [{"id": 3, "image_id": 10, "category_id": 1, "bbox": [1, 2]}])
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 3\): needs .*bbox"):
        COCODataset(ann, images)
    ann, images = make_coco(tmp_path, [], images=[{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}])
    data = json.loads(open(ann).read())
    del data["images"][0]["width"]
    open(ann, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match=r"images\[0\] needs"):
        COCODataset(ann, images)
    with pytest.raises(ValueError, match="annotation file is missing"):
        COCODataset(str(tmp_path / "none.json"), images)


def test_missing_and_unreadable_images(tmp_path):
    ann, images = make_coco(tmp_path, [])
    os.remove(os.path.join(images, "b.jpg"))
    with pytest.raises(ValueError, match=r"missing: .*b\.jpg"):
        COCODataset(ann, images)
    with open(os.path.join(images, "b.jpg"), "wb") as f:
        f.write(b"\x00\x01 garbage")
    ds = COCODataset(ann, images)
    with pytest.raises(ValueError, match=r"b\.jpg: cannot read image"):
        ds.get(1)
    with pytest.raises(ValueError, match="images"):
        COCODataset(ann, str(tmp_path / "no_such_dir"))


# ------------------------------------------------------------------------------------------------
# The official COCO evaluation on the file's own ground truth (issue 13)
# ------------------------------------------------------------------------------------------------
def _sized_coco(tmp_path, rng):
    """A COCO file with objects of every size, non-contiguous image and category ids, a crowd region,
    and ``area`` = 0.55 of the box (a mask's area, as in COCO), so boxes just over 32 x 32 or 96 x 96
    are "small" or "medium" objects for COCO but not by their boxes' area."""
    images = [{"id": iid, "file_name": f"{iid}.jpg", "width": 640, "height": 480} for iid in (42, 7, 1000, 3)]
    anns, k = [], 0
    sides = [12, 20, 34, 40, 60, 100, 110, 150, 250]
    for img in images:
        for _ in range(6):
            side = float(rng.choice(sides)) * rng.uniform(0.9, 1.1)
            w, h = side * rng.uniform(0.8, 1.25), side
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            k += 1
            anns.append({"id": k, "image_id": img["id"], "category_id": int(rng.choice([1, 5, 9])),
                         "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                         "area": round(0.55 * w * h, 2), "iscrowd": 0})
    anns[3]["iscrowd"] = 1
    path = tmp_path / "instances_sized.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return str(path), images, anns


def _detections_for(ds, anns, rng):
    """Per sample: jittered copies of its objects (some with the wrong class), plus false alarms."""
    cat_to_label = {c: i for i, c in enumerate(ds.label_to_category) if c is not None}
    detections = []
    for image_id in ds.image_ids:
        boxes, labels, scores = [], [], []
        for a in (a for a in anns if a["image_id"] == image_id):
            x, y, w, h = a["bbox"]
            if rng.random() < 0.8:
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
                label = cat_to_label[a["category_id"]] if rng.random() < 0.85 else int(rng.integers(1, 4))
                labels.append(label)
                scores.append(rng.uniform(0.3, 1.0))
        for _ in range(3):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            boxes.append([x, y, x + rng.uniform(10, 140), y + rng.uniform(10, 100)])
            labels.append(int(rng.integers(1, 4)))
            scores.append(rng.uniform(0.0, 0.6))
        detections.append((np.array(boxes), np.array(labels), np.array(scores)))
    return detections


def test_coco_evaluate_file_gives_what_pycocotools_prints(tmp_path):
    pytest.importorskip("pycocotools")
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from minissd.metrics import COCO_STAT_NAMES, coco_evaluate, coco_evaluate_file

    rng = np.random.default_rng(13)
    ann_path, images, anns = _sized_coco(tmp_path, rng)
    ds = COCODataset(ann_path, str(tmp_path), check_images=False)
    assert ds.image_ids == [42, 7, 1000, 3] and ds.label_to_category == [None, 1, 5, 9]
    detections = _detections_for(ds, anns, rng)

    got = coco_evaluate_file(ds.annotations, detections, ds.image_ids, ds.label_to_category,
                             results_path=tmp_path / "results.json")

    # pycocotools on its own, given the same file and the same detections (the results json written above).
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        gt = COCO(ann_path)
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "results.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    official = dict(zip(COCO_STAT_NAMES, ev.stats, strict=True))
    assert got.keys() == official.keys()
    for name in COCO_STAT_NAMES:
        assert got[name] == pytest.approx(official[name], abs=1e-12), name
    # ... and what it prints: "Average Precision (AP) @[ IoU=0.50:0.95 | area= small | ...] = 0.xyz"
    lines = [line for line in printed.getvalue().splitlines() if line.startswith(" Average")]
    assert len(lines) == 12
    for name, line in zip(COCO_STAT_NAMES, lines, strict=True):
        assert float(line.rsplit("=", 1)[1]) == pytest.approx(got[name], abs=5e-4), (name, line)
    assert min(official[n] for n in ("APs", "APm", "APl", "ARs", "ARm")) > 0   # every size is populated

    # The boxes-rebuilt evaluation sizes objects by w * h: the by-size numbers move, the others do not.
    targets = [ds.records[i]["targets"] for i in range(len(ds))]   # (boxes, labels, crowd) without the images
    rebuilt = coco_evaluate(detections, targets, class_names=ds.class_names)
    for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert rebuilt[name] == pytest.approx(official[name], abs=1e-9), name
    assert any(abs(rebuilt[n] - official[n]) > 1e-3 for n in ("APs", "APm", "APl", "ARs", "ARm", "ARl"))


def test_coco_evaluate_file_refuses_ids_the_file_does_not_have(tmp_path):
    pytest.importorskip("pycocotools")
    from minissd.metrics import coco_evaluate_file

    rng = np.random.default_rng(5)
    ann_path, _, anns = _sized_coco(tmp_path, rng)
    ds = COCODataset(ann_path, str(tmp_path), check_images=False)
    detections = _detections_for(ds, anns, rng)
    with pytest.raises(ValueError, match=r"image_ids: 8 is not an image id of .*instances_sized\.json"):
        coco_evaluate_file(ann_path, detections, [42, 8, 1000, 3], ds.label_to_category)
    with pytest.raises(ValueError, match=r"category id 2 .* is not a category"):
        coco_evaluate_file(ann_path, detections, ds.image_ids, [None, 1, 2, 9])
    with pytest.raises(ValueError, match="does not exist"):
        coco_evaluate_file(tmp_path / "none.json", detections, ds.image_ids)
    empty = [(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))] * 4
    assert set(coco_evaluate_file(ann_path, empty, ds.image_ids, ds.label_to_category).values()) == {0.0}
    # A subset of the images: only those are evaluated.
    part = coco_evaluate_file(ann_path, detections[:2], ds.image_ids[:2], ds.label_to_category)
    assert 0 < part["AP50"] <= 1

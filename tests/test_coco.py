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

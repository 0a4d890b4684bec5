"""The built-in shapes dataset: deterministic, honest boxes, the promised variety, VOC export."""
import numpy as np
import pytest

from minissd.boxes import iou as boxes_iou
from minissd.data import ShapesDataset, VOCDataset, open_dataset
from minissd.data import shapes as shapes_mod
from minissd.data.shapes import CLASS_NAMES, SPLIT_IDS, _background, draw_image


def _objects(n=300, split="val", **kw):
    ds = ShapesDataset(split, count=n, **kw)
    boxes, labels, counts = [], [], []
    for i in range(n):
        s = ds.get(i)
        boxes.append(s.boxes)
        labels.append(s.labels)
        counts.append(len(s.labels))
    return np.concatenate(boxes), np.concatenate(labels), np.array(counts)


def test_sample_contract():
    ds = ShapesDataset("test", size=96)
    assert len(ds) == 500 and len(ShapesDataset("val")) == 200 and len(ShapesDataset("train")) >= 10000
    assert ds.class_names == CLASS_NAMES and len(CLASS_NAMES) == 4
    for i in range(30):
        s = ds.get(i)
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert s.boxes.dtype == np.float32 and s.boxes.shape == (len(s.labels), 4)
        assert s.labels.dtype == np.int64 and s.difficult.dtype == bool and not s.difficult.any()
        assert s.image_id == f"test_{i:06d}"
        assert np.all(s.boxes[:, 2] > s.boxes[:, 0]) and np.all(s.boxes[:, 3] > s.boxes[:, 1])
        assert np.all(s.boxes >= 0) and np.all(s.boxes <= 96)  # every object fully inside
        assert np.all((s.labels >= 1) & (s.labels <= 4))


def test_deterministic_and_splits_differ():
    a, b = ShapesDataset("val", seed=3).get(7), ShapesDataset("val", seed=3).get(7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    # Image i of a split does not depend on which images were drawn before it.
    ds = ShapesDataset("val", seed=3)
    ds.get(0)
    assert np.array_equal(ds.get(7).image, a.image)
    assert not np.array_equal(ShapesDataset("test", seed=3).get(7).image, a.image)
    assert not np.array_equal(ShapesDataset("val", seed=4).get(7).image, a.image)
    assert len(SPLIT_IDS) == 3 and len(set(SPLIT_IDS.values())) == 3


def test_variety_of_classes_scales_aspects_and_counts():
    boxes, labels, counts = _objects(300)
    assert counts.min() >= 1 and counts.max() == 6 and np.mean(counts) > 2.5
    freq = np.bincount(labels, minlength=5)[1:] / len(labels)
    assert np.all(freq > 0.15), freq  # balanced classes
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    rel = np.sqrt(w * h) / 128
    assert rel.min() < 0.13 and rel.max() > 0.65  # a tenth of the image to most of it
    aspect = w / h
    round_or_square = np.isin(labels, [1, 2])
    np.testing.assert_allclose(aspect[round_or_square], 1.0, rtol=1e-4)
    stretched = aspect[~round_or_square]
    assert stretched.min() < 0.6 and stretched.max() > 1.7


def test_colour_does_not_give_the_class_away():
    # Mean colour inside the solid centre of each object: the per-class averages are all mid-grey.
    ds = ShapesDataset("val", count=150)
    per_class = {c: [] for c in range(1, 5)}
    for i in range(len(ds)):
        s = ds.get(i)
        for (x1, y1, x2, y2), c in zip(s.boxes, s.labels, strict=True):
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            per_class[int(c)].append(s.image[cy, cx].astype(float))
    means = np.array([np.mean(v, 0) for v in per_class.values()])
    assert np.all(np.abs(means - 127.5) < 35), means


@pytest.mark.parametrize("index", range(16))
def test_boxes_are_the_drawn_extent_and_shapes_have_their_area(index):
    # One object, no noise: the pixels that differ from the background (rebuilt from the same
    # Generator state) are the object; their bounding box is the labelled box to within a pixel, and
    # the filled fraction of the box identifies the class.
    rng = np.random.default_rng([99, index])
    image, boxes, labels = draw_image(np.random.default_rng([99, index]), 128, 1, 1, 0.15, 0.8, 0.45, (0.0, 0.0),
                                      triangle_orientations=4 if index % 2 else 1)
    background, _ = _background(rng, 128)  # (3, S, S)
    diff = np.abs(image.astype(float) - background.transpose(1, 2, 0)).max(-1)
    mask = diff > 25
    ys, xs = np.nonzero(mask)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    np.testing.assert_allclose(found, boxes[0], atol=1.01)
    x1, y1, x2, y2 = boxes[0]
    fill = mask.sum() / ((x2 - x1) * (y2 - y1))
    expected = {1: (np.pi / 4 - 0.07, np.pi / 4 + 0.07), 2: (0.9, 1.06), 3: (0.42, 0.58), 4: (0.45, 0.72)}
    lo, hi = expected[int(labels[0])]
    assert lo <= fill <= hi, (CLASS_NAMES[labels[0] - 1], fill)


def test_every_labelled_object_stays_visible():
    fractions = []
    for i in range(200):
        _, _, labels, visible = draw_image(np.random.default_rng([5, i]), 128, max_occlusion=0.45,
                                           return_visible=True)
        assert len(visible) == len(labels)
        fractions.append(visible)
    fractions = np.concatenate(fractions)
    assert fractions.min() >= 0.55 - 1e-9
    assert (fractions < 0.95).mean() > 0.05  # occlusion does happen


def test_triangles_point_up_unless_asked_otherwise():
    def apex_rows(orientations):
        # An upright triangle is narrow near the top of its box and wide near the bottom.
        ratios = []
        for i in range(60):
            image, boxes, labels = draw_image(np.random.default_rng([7, i]), 128, 1, 1, 0.3, 0.6, 0.45, (0.0, 0.0),
                                              triangle_orientations=orientations)
            if labels[0] != 3:
                continue
            background, _ = _background(np.random.default_rng([7, i]), 128)
            mask = np.abs(image.astype(float) - background.transpose(1, 2, 0)).max(-1) > 25
            x1, y1, x2, y2 = np.round(boxes[0]).astype(int)
            top, bottom = mask[y1 + 2, x1:x2].sum(), mask[y2 - 3, x1:x2].sum()
            ratios.append(top < bottom)
        return np.array(ratios)

    assert apex_rows(1).all()
    four = apex_rows(4)
    assert 0.1 < four.mean() < 0.9  # other orientations appear


def test_same_class_boxes_never_overlap_beyond_nms():
    # Per-class NMS at IoU 0.45 keeps only one of two such boxes; the dataset never draws them.
    ds = ShapesDataset("test", count=300)
    worst = 0.0
    for i in range(len(ds)):
        s = ds.get(i)
        iou = boxes_iou(s.boxes, s.boxes)
        np.fill_diagonal(iou, 0.0)
        same = s.labels[:, None] == s.labels[None, :]
        worst = max(worst, float((iou * same).max(initial=0.0)))
    assert 0.1 < worst <= 0.4


def test_open_dataset_shapes():
    ds = open_dataset("shapes", split="val", size=64, seed=2)
    assert isinstance(ds, ShapesDataset) and ds.size == 64 and ds.split == "val" and ds.seed == 2


@pytest.mark.parametrize("kwargs, word", [({"split": "dev"}, "split"), ({"size": 8}, "size"),
                                          ({"count": -1}, "count"), ({"min_scale": 0.0}, "min_scale"),
                                          ({"max_objects": 0}, "max_objects"),
                                          ({"max_occlusion": 1.0}, "max_occlusion"),
                                          ({"triangle_orientations": 3}, "triangle_orientations")])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ShapesDataset(**kwargs)
    with pytest.raises(IndexError):
        ShapesDataset("val").get(200)


def test_cli_writes_voc_layout_that_the_voc_reader_reads_back(tmp_path, capsys):
    out = tmp_path / "shapes_voc"
    assert shapes_mod.main(["--out", str(out), "--count", "6", "--split", "train,test", "--seed", "1"]) == 0
    assert "test: 6 images" in capsys.readouterr().out
    for name in ("classes.txt", "ImageSets/Main/train.txt", "ImageSets/Main/test.txt",
                 "Annotations/test_000000.xml", "JPEGImages/test_000005.jpg"):
        assert (out / name).exists(), name
    voc = VOCDataset(str(out), "test")
    assert voc.class_names == CLASS_NAMES and len(voc) == 6
    ref = ShapesDataset("test", seed=1)
    for i in range(6):
        a, b = voc.get(i), ref.get(i)
        assert a.image_id == b.image_id and np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5 + 1e-4)  # VOC stores whole pixels
        # JPEG (quality 95) loses the pixel noise, not the picture: compare 4x4 block means.
        blocks = [im.astype(float).reshape(32, 4, 32, 4, 3).mean((1, 3)) for im in (a.image, b.image)]
        assert np.abs(blocks[0] - blocks[1]).mean() < 3
    with pytest.raises(SystemExit):
        shapes_mod.main(["--out", str(out), "--split", "dev"])

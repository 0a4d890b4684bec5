"""Default boxes: counts, the authors' first/last boxes and per-layer sizes, order, eq. (4), validation."""
import itertools
import math

import numpy as np
import pytest

from minissd.priors import PRIOR_CONFIGS, PriorConfig, get_config, make_priors, num_priors, num_priors_per_location


@pytest.mark.parametrize("name, count, per_loc", [
    # SSD300: 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4 = 5776 + 2166 + 600 + 150 + 36 + 4
    ("ssd300", 8732, [4, 6, 6, 6, 4, 4]),
    # SSD512: 64^2*4 + 32^2*6 + 16^2*6 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4 = 16384 + 6144 + 1536 + 384 + 96 + 16 + 4
    ("ssd512", 24564, [4, 6, 6, 6, 6, 4, 4]),
    # small: 16^2*4 + 8^2*6 + 4^2*6 + 2^2*4 + 1*4 = 1024 + 384 + 96 + 16 + 4
    ("small", 1524, [4, 6, 6, 4, 4]),
])
def test_counts(name, count, per_loc):
    priors = make_priors(name)
    assert priors.shape == (count, 4)
    assert priors.dtype == np.float64 and priors.flags.c_contiguous
    assert num_priors(name) == count
    assert num_priors_per_location(name) == per_loc
    assert num_priors_per_location(PRIOR_CONFIGS[name]) == per_loc


def test_ssd300_first_boxes_match_caffe():
    p = make_priors("ssd300")
    c = 0.5 * 8 / 300                                # centre of cell (0, 0) of conv4_3: 1/75
    expected = np.array([
        [c, c, 30 / 300, 30 / 300],                  # s_1 = 30 px, ratio 1
        [c, c, math.sqrt(30 * 60) / 300, math.sqrt(30 * 60) / 300],       # s'_1 = sqrt(30 * 60) px
        [c, c, 30 * math.sqrt(2) / 300, 30 / math.sqrt(2) / 300],          # ratio 2 (wide)
        [c, c, 30 / math.sqrt(2) / 300, 30 * math.sqrt(2) / 300],          # ratio 1/2 (tall)
    ])
    np.testing.assert_allclose(p[:4], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(p[0], [1 / 75, 1 / 75, 1 / 10, 1 / 10], atol=1e-15)


def test_ssd300_last_box_matches_caffe():
    p = make_priors("ssd300")
    # conv9_2 (1x1, step 300): centre 0.5; the last box is min size 264 px at ratio 1/2.
    np.testing.assert_allclose(p[-1], [0.5, 0.5, 264 / math.sqrt(2) / 300, 264 * math.sqrt(2) / 300],
                               atol=1e-15)
    np.testing.assert_allclose(p[-4], [0.5, 0.5, 264 / 300, 264 / 300], atol=1e-15)
    np.testing.assert_allclose(p[-3, 2:], [math.sqrt(264 * 315) / 300] * 2, atol=1e-15)


def test_ssd512_first_and_last_boxes():
    p = make_priors("ssd512")
    np.testing.assert_allclose(p[0], [1 / 128, 1 / 128, 35.84 / 512, 35.84 / 512], atol=1e-15)
    np.testing.assert_allclose(p[1, 2], math.sqrt(35.84 * 76.8) / 512, atol=1e-15)
    np.testing.assert_allclose(p[-1], [0.5, 0.5, 460.8 / math.sqrt(2) / 512, 460.8 * math.sqrt(2) / 512],
                               atol=1e-15)


@pytest.mark.parametrize("name", ["ssd300", "ssd512"])
def test_per_layer_sizes_are_the_authors(name):
    cfg = PRIOR_CONFIGS[name]
    authors = {  # ssd_pascal.py / ssd_pascal_512.py: (min_sizes, max_sizes, steps) in pixels
        "ssd300": ((30, 60, 111, 162, 213, 264), (60, 111, 162, 213, 264, 315), (8, 16, 32, 64, 100, 300)),
        "ssd512": ((35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
                   (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6), (8, 16, 32, 64, 128, 256, 512)),
    }[name]
    p = make_priors(name)
    start = 0
    S = cfg.image_size
    for k, (f, n) in enumerate(zip(cfg.feature_maps, num_priors_per_location(cfg), strict=True)):
        first = p[start:start + n]               # the boxes at cell (0, 0) of map k
        step = authors[2][k]
        np.testing.assert_allclose(first[:, :2], 0.5 * step / S, atol=1e-15)
        np.testing.assert_allclose(first[0, 2:], authors[0][k] / S, atol=1e-15)
        np.testing.assert_allclose(first[1, 2:], math.sqrt(authors[0][k] * authors[1][k]) / S, atol=1e-15)
        # every ratio-r box has area s_k^2 and w / h = r
        np.testing.assert_allclose(first[2:, 2] * first[2:, 3], (authors[0][k] / S) ** 2, rtol=1e-12)
        start += f * f * n
    assert start == len(p)


def _caffe_style_priors(cfg):
    """An independent loop in the order of Caffe's PriorBox layer (and ssd.pytorch's PriorBox)."""
    out = []
    for k, f in enumerate(cfg.feature_maps):
        for i, j in itertools.product(range(f), repeat=2):
            cx = (j + 0.5) * cfg.steps[k] / cfg.image_size
            cy = (i + 0.5) * cfg.steps[k] / cfg.image_size
            s = cfg.min_sizes[k] / cfg.image_size
            out.append([cx, cy, s, s])
            s2 = math.sqrt(cfg.min_sizes[k] * cfg.max_sizes[k]) / cfg.image_size
            out.append([cx, cy, s2, s2])
            for r in cfg.aspect_ratios[k]:
                out.append([cx, cy, s * math.sqrt(r), s / math.sqrt(r)])
                out.append([cx, cy, s / math.sqrt(r), s * math.sqrt(r)])
    return np.array(out)


@pytest.mark.parametrize("name", ["ssd300", "small"])
def test_order_matches_an_independent_loop(name):
    cfg = PRIOR_CONFIGS[name]
    np.testing.assert_allclose(make_priors(name), _caffe_style_priors(cfg), rtol=0, atol=1e-15)


def test_row_major_locations():
    p = make_priors("ssd300")
    # index 4 is cell (row 0, column 1): x moves first
    np.testing.assert_allclose(p[4, :2], [1.5 * 8 / 300, 0.5 * 8 / 300], atol=1e-15)
    # index 38 * 4 is cell (row 1, column 0)
    np.testing.assert_allclose(p[38 * 4, :2], [0.5 * 8 / 300, 1.5 * 8 / 300], atol=1e-15)
    # fc7 starts after 38^2 * 4 = 5776 boxes, with steps of 16 px and s_2 = 60 px
    np.testing.assert_allclose(p[5776], [8 / 300, 8 / 300, 60 / 300, 60 / 300], atol=1e-15)


def test_small_config_covers_9_to_90_percent():
    cfg = PRIOR_CONFIGS["small"]
    p = make_priors(cfg)
    assert cfg.image_size == 128 and cfg.feature_maps == (16, 8, 4, 2, 1)
    assert cfg.min_sizes == (16, 32, 56, 88, 112) and cfg.max_sizes == (32, 56, 88, 112, 128)
    sides = np.minimum(p[:, 2], p[:, 3])
    assert sides.min() == pytest.approx(16 / math.sqrt(2) / 128)    # 11.3 px = 8.8 % of the image
    ratio1 = p[np.isclose(p[:, 2], p[:, 3]), 2]
    assert ratio1.max() == pytest.approx(math.sqrt(112 * 128) / 128)  # 119.7 px = 93.5 %


def test_small_config_covers_the_shapes_dataset():
    # The reason for the small config's sizes: nearly every object of the built-in data has a default box
    # with IoU >= 0.5 (objects there are 10 %..80 % of the image side).
    from minissd.boxes import cxcywh_to_xyxy, iou
    from minissd.data import ShapesDataset

    ds = ShapesDataset("train")
    priors_xyxy = cxcywh_to_xyxy(make_priors("small"))
    best = []
    for i in range(60):
        s = ds.get(i)
        h, w = s.image.shape[:2]
        if len(s.boxes):
            best.append(iou(priors_xyxy, s.boxes / np.array([w, h, w, h])).max(axis=0))
    best = np.concatenate(best)
    assert (best < 0.5).mean() < 0.10


def test_eq4_linear_scales():
    ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    cfg = PriorConfig.from_scales(300, (38, 19, 10, 5, 3, 1), ratios, steps=(8, 16, 32, 64, 100, 300))
    # s_k = 0.2 + 0.7 / 5 * (k - 1): 0.2, 0.34, 0.48, 0.62, 0.76, 0.9; s_7 = 1.04 sizes the last extra box
    np.testing.assert_allclose(np.array(cfg.min_sizes) / 300, [0.2, 0.34, 0.48, 0.62, 0.76, 0.9])
    np.testing.assert_allclose(np.array(cfg.max_sizes) / 300, [0.34, 0.48, 0.62, 0.76, 0.9, 1.04])
    assert make_priors(cfg).shape == (8732, 4)
    # the authors' variant: conv4_3 at 0.1, eq. (4) over the other five maps: 0.2, 0.375, ..., 0.9
    cfg2 = PriorConfig.from_scales(300, (38, 19, 10, 5, 3, 1), ratios, first_scale=0.1)
    np.testing.assert_allclose(np.array(cfg2.min_sizes) / 300, [0.1, 0.2, 0.375, 0.55, 0.725, 0.9])


def test_clip_keeps_boxes_inside_the_image():
    cfg = PriorConfig(**{**PRIOR_CONFIGS["ssd300"].to_dict(), "clip": True})
    p = make_priors(cfg)
    x1y1, x2y2 = p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2
    assert x1y1.min() >= -1e-15 and x2y2.max() <= 1 + 1e-15
    assert np.all(p[:, 2:] > 0)
    # unclipped SSD300 boxes do stick out (the authors do not clip)
    q = make_priors("ssd300")
    assert (q[:, :2] - q[:, 2:] / 2).min() < 0


def test_config_round_trips_through_dict():
    cfg = PRIOR_CONFIGS["small"]
    assert PriorConfig.from_dict(cfg.to_dict()) == cfg
    assert get_config(cfg.to_dict()) == cfg
    np.testing.assert_array_equal(make_priors(cfg.to_dict()), make_priors("small"))


@pytest.mark.parametrize("change, word", [
    ({"feature_maps": (16, 8)}, "steps"),
    ({"steps": (8, 16, 32, 64, -1)}, "steps"),
    ({"min_sizes": (10, 24, 48, 80, float("nan"))}, "min_sizes"),
    ({"aspect_ratios": ((2,), (1, 3), (2, 3), (2,), (2,))}, "aspect_ratios"),
    ({"aspect_ratios": ((2,), (0, 3), (2, 3), (2,), (2,))}, "aspect_ratios"),
    ({"image_size": 0}, "image_size"),
    ({"feature_maps": (16, 8, 0, 2, 1)}, "feature_maps"),
    ({"offset": 2.0}, "offset"),
])
def test_bad_config_raises(change, word):
    d = {**PRIOR_CONFIGS["small"].to_dict(), **change}
    with pytest.raises(ValueError, match=word):
        PriorConfig(**d)


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown prior config"):
        make_priors("ssd301")
    with pytest.raises(ValueError):
        make_priors(3)

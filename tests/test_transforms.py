"""The SSD augmentation: boxes follow the pixels, the crop samplers keep their promises, each step works."""
import numpy as np
import pytest

from conftest import HealthCheck, given, settings, st
from minissd.boxes import iou
from minissd.data import EvalTransform, TrainTransform, preprocess
from minissd.data.transforms import photometric_distort, render, sample_crop


def _channel_boxes_image(rng, height, width, n):
    """A black image where box k lights channel k with 255: (image, boxes (n, 4) on whole pixels)."""
    image = np.zeros((height, width, 3), np.uint8)
    boxes = []
    for k in range(n):
        w = int(rng.integers(max(2, width // 8), width + 1))
        h = int(rng.integers(max(2, height // 8), height + 1))
        x1 = int(rng.integers(0, width - w + 1))
        y1 = int(rng.integers(0, height - h + 1))
        image[y1:y1 + h, x1:x1 + w, k] = 255
        boxes.append((x1, y1, x1 + w, y1 + h))
    return image, np.array(boxes, np.float32)


def _check_boxes_match_pixels(chw, boxes, labels, size, min_px=4.0, atol=1.6):
    assert boxes.dtype == np.float32 and np.all(boxes >= 0) and np.all(boxes <= 1)
    assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    checked = 0
    for box, k in zip(boxes * size, labels, strict=True):
        if box[2] - box[0] < min_px or box[3] - box[1] < min_px:
            continue  # too small to measure after the resize
        mask = chw[int(k)] > 127.5  # where the 255 -> 0 edge crosses half height
        ys, xs = np.nonzero(mask)
        assert xs.size, (box, k)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        np.testing.assert_allclose(found, box, atol=atol, err_msg=f"object {k}")
        checked += 1
    return checked


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), height=st.integers(24, 160), width=st.integers(24, 160),
       n=st.integers(1, 3), min_scale=st.sampled_from([0.1, 0.3]))
def test_boxes_follow_the_pixels(seed, height, width, n, min_scale):
    # Each object lights its own channel, so the output box of object k must be the extent of the
    # bright pixels in channel k, through expansion, crop, flip and resize.
    rng = np.random.default_rng(seed)
    image, boxes = _channel_boxes_image(rng, height, width, n)
    t = TrainTransform(64, mean=0.0, std=1.0, photometric=False, expand_prob=0.7, crop_min_scale=min_scale)
    chw, out_boxes, out_labels = t(image, boxes, np.arange(n), rng)
    assert chw.shape == (3, 64, 64) and chw.dtype == np.float32
    assert out_labels.shape == (len(out_boxes),) and set(out_labels.tolist()) <= set(range(n))
    _check_boxes_match_pixels(chw, out_boxes, out_labels, 64)


def test_boxes_follow_the_pixels_is_not_vacuous():
    # The property above must have measured many boxes, under every geometric step.
    checked = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        image, boxes = _channel_boxes_image(rng, 100, 140, 3)
        t = TrainTransform(64, mean=0.0, std=1.0, photometric=False, expand_prob=0.5)
        checked += _check_boxes_match_pixels(*t(image, boxes, np.arange(3), rng), 64)
    assert checked > 60
    # And it would catch a box that is off by a few pixels.
    rng = np.random.default_rng(0)
    image, boxes = _channel_boxes_image(rng, 100, 140, 1)
    chw, out, labels = EvalTransform(64, 0.0, 1.0)(image, boxes, np.arange(1))
    with pytest.raises(AssertionError):
        _check_boxes_match_pixels(chw, out + np.float32(4 / 64), labels, 64)


def test_deterministic_given_the_generator():
    rng = np.random.default_rng(1)
    image, boxes = _channel_boxes_image(rng, 90, 120, 3)
    t = TrainTransform(48)
    a = t(image, boxes, np.array([1, 2, 3]), np.random.default_rng(7))
    b = t(image, boxes, np.array([1, 2, 3]), np.random.default_rng(7))
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    c = t(image, boxes, np.array([1, 2, 3]), np.random.default_rng(8))
    assert not np.array_equal(a[0], c[0])


def _satisfies(patch, boxes, threshold):
    patch = np.array([patch], float)
    overlap = iou(patch, boxes)[0]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx >= patch[0, 0]) & (cx <= patch[0, 2]) & (cy >= patch[0, 1]) & (cy <= patch[0, 3])
    return overlap.max() >= threshold and inside.any()


def test_crop_meets_its_min_iou_with_at_least_one_object():
    rng = np.random.default_rng(3)
    boxes = np.array([[10, 10, 110, 90], [100, 60, 190, 140]], float)
    seen_crop = 0
    for _ in range(300):
        patch = sample_crop(boxes, 200, 150, rng, min_ious=(0.7,))
        if patch == (0.0, 0.0, 200.0, 150.0):
            continue
        seen_crop += 1
        assert _satisfies(patch, boxes, 0.7)
        w, h = (patch[2] - patch[0]) / 200, (patch[3] - patch[1]) / 150
        assert 0.3 - 1e-9 <= np.sqrt(w * h) <= 1 + 1e-9 and 0.5 - 1e-9 <= w / h <= 2 + 1e-9
    assert seen_crop > 30


def test_crop_rejects_patches_below_the_threshold():
    # ssd.pytorch's test `overlap.min() < min_iou and max_iou < overlap.max()` accepts everything;
    # with one small object no 0.9-IoU patch of scale >= 0.3 exists, so only the whole image is left.
    boxes = np.array([[0, 0, 10, 10]], float)
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert sample_crop(boxes, 100, 100, rng, min_ious=(0.9,)) == (0.0, 0.0, 100.0, 100.0)
    # Without objects nothing but the whole image qualifies (as in Caffe).
    assert sample_crop(np.zeros((0, 4)), 100, 80, rng) == (0.0, 0.0, 100.0, 80.0)


def test_crop_scale_option_reaches_the_papers_smaller_patches():
    boxes = np.array([[0, 0, 100, 100]], float)
    rng = np.random.default_rng(0)
    scales = {}
    for lo in (0.1, 0.3):
        s = []
        for _ in range(300):
            x1, y1, x2, y2 = sample_crop(boxes, 100, 100, rng, min_ious=(None,), min_scale=lo)
            s.append(np.sqrt((x2 - x1) * (y2 - y1)) / 100)
        scales[lo] = min(s)
    assert scales[0.3] >= 0.3 - 1e-9 and scales[0.1] < 0.2


def test_expand_zooms_out_onto_the_mean():
    image = np.full((40, 40, 3), 200, np.uint8)
    boxes = np.array([[0, 0, 40, 40]], np.float32)
    t = TrainTransform(40, mean=(10, 20, 30), std=1.0, photometric=False, crop=False, flip=False,
                       expand_prob=1.0, expand_ratio=4.0)
    widths = []
    for seed in range(30):
        chw, out, _ = t(image, boxes, np.array([1]), np.random.default_rng(seed))
        widths.append(out[0, 2] - out[0, 0])
        if widths[-1] < 0.95:
            assert np.isclose(chw, 0.0).all(axis=0).any()  # the fill is the mean, which normalises to 0
        np.testing.assert_allclose(chw.max(axis=(1, 2)), [190, 180, 170], atol=1)
    assert 0.25 - 0.01 <= min(widths) < 0.5 and max(widths) <= 1.0


def test_flip_mirrors_image_and_boxes():
    rng = np.random.default_rng(0)
    image, boxes = _channel_boxes_image(rng, 64, 64, 1)
    t = TrainTransform(64, mean=0.0, std=1.0, photometric=False, expand=False, crop=False, flip_prob=1.0)
    chw, out, _ = t(image, boxes, np.array([0]), rng)
    np.testing.assert_allclose(out[0], [1 - boxes[0, 2] / 64, boxes[0, 1] / 64, 1 - boxes[0, 0] / 64,
                                        boxes[0, 3] / 64], atol=1e-6)
    np.testing.assert_array_equal(chw.transpose(1, 2, 0), image[:, ::-1].astype(np.float32))


def test_photometric_steps():
    grey = np.full((8, 8, 3), 100, np.uint8)
    rng = np.random.default_rng(0)
    identity = dict(contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0.0, prob=1.0)
    deltas = {int(photometric_distort(grey, rng, brightness_delta=32, **identity)[0, 0, 0]) - 100
              for _ in range(50)}
    assert min(deltas) >= -32 and max(deltas) <= 32 and len(deltas) > 10
    out = photometric_distort(grey, rng, brightness_delta=0, contrast_range=(1.5, 1.5),
                              saturation_range=(1, 1), hue_delta=0.0, prob=1.0)
    assert np.all(out == 150)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 200
    colour[..., 1] = 50
    desaturated = photometric_distort(colour, rng, brightness_delta=0, contrast_range=(1, 1),
                                      saturation_range=(0, 0), hue_delta=0.0, prob=1.0)
    assert np.ptp(desaturated[0, 0].astype(int)) <= 1  # grey
    turned = photometric_distort(colour, np.random.default_rng(1), brightness_delta=0, contrast_range=(1, 1),
                                 saturation_range=(1, 1), hue_delta=120.0, prob=1.0)
    assert turned.dtype == np.uint8 and not np.array_equal(turned, colour)
    assert abs(int(turned.max()) - 200) <= 2  # a hue turn keeps the value (max channel)
    swapped = photometric_distort(colour, np.random.default_rng(2), brightness_delta=0, prob=0.0,
                                  channel_swap_prob=1.0)
    assert sorted(swapped[0, 0].tolist()) == [0, 50, 200]
    assert np.array_equal(photometric_distort(colour, rng, prob=0.0), colour)


def test_photometric_keeps_the_fill_at_the_mean():
    image = np.full((20, 20, 3), 128, np.uint8)
    t = TrainTransform(40, mean=(10, 20, 30), std=1.0, crop=False, flip=False, expand_prob=1.0,
                       photometric_prob=1.0)
    chw, _, _ = t(image, np.zeros((0, 4)), np.zeros(0, np.int64), np.random.default_rng(0))
    assert (chw == 0).all(axis=0).sum() > 40 * 40 // 4


def test_eval_transform():
    image = np.full((50, 100, 3), (10, 20, 30), np.uint8)
    boxes = np.array([[0, 0, 100, 50], [25, 10, 75, 40]], np.float32)
    t = EvalTransform(32, mean=(10, 20, 30), std=(2, 4, 5))
    chw, out, labels = t(image, boxes, np.array([3, 4]))
    assert chw.shape == (3, 32, 32) and np.allclose(chw, 0)
    np.testing.assert_allclose(out, [[0, 0, 1, 1], [0.25, 0.2, 0.75, 0.8]])
    assert labels.tolist() == [3, 4]
    assert np.array_equal(preprocess(image, 32, (10, 20, 30), (2, 4, 5)), chw)
    chw, _, _ = EvalTransform(2, mean=0, std=(1, 2, 4))(np.full((2, 2, 3), 8, np.uint8), np.zeros((0, 4)),
                                                         np.zeros(0, np.int64))
    np.testing.assert_allclose(chw[:, 0, 0], [8, 4, 2])


def test_render_matches_plain_resize_when_nothing_is_cropped():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = render(image, 40, np.zeros(3, np.uint8), crop=(0.0, 0.0, 50.0, 30.0))
    general = render(image, 40, np.zeros(3, np.uint8), offset=(0, 0), canvas_size=(50, 31),
                     crop=(0.0, 0.0, 50.0, 30.0))
    np.testing.assert_allclose(out.astype(int), general.astype(int), atol=1)


def test_turning_steps_off_is_the_eval_resize():
    rng = np.random.default_rng(0)
    image, boxes = _channel_boxes_image(rng, 60, 80, 2)
    off = TrainTransform(32, photometric=False, expand=False, crop=False, flip=False)
    a = off(image, boxes, np.array([1, 2]), rng)
    b = EvalTransform(32)(image, boxes, np.array([1, 2]))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("args, word", [
    ((np.zeros((4, 4, 3), np.float32), np.zeros((0, 4)), np.zeros(0, int)), "image"),
    ((np.zeros((4, 4), np.uint8), np.zeros((0, 4)), np.zeros(0, int)), "image"),
    ((np.zeros((4, 4, 3), np.uint8), np.zeros((1, 3)), np.zeros(1, int)), "boxes_px"),
    ((np.zeros((4, 4, 3), np.uint8), np.array([[3, 0, 1, 2]]), np.zeros(1, int)), "boxes_px"),
    ((np.zeros((4, 4, 3), np.uint8), np.array([[0, 0, np.nan, 2]]), np.zeros(1, int)), "boxes_px"),
    ((np.zeros((4, 4, 3), np.uint8), np.array([[0, 0, 1, 2]]), np.zeros(2, int)), "labels"),
    ((np.zeros((4, 4, 3), np.uint8), np.array([[0, 0, 1, 2]]), np.zeros(1, float)), "labels"),
])
def test_bad_inputs_name_the_argument(args, word):
    for t in (TrainTransform(8), EvalTransform(8)):
        with pytest.raises(ValueError, match=word):
            t(*args, np.random.default_rng(0))


@pytest.mark.parametrize("kwargs, word", [({"size": 0}, "size"), ({"std": 0}, "std"), ({"mean": (1, 2)}, "mean"),
                                          ({"expand_ratio": 0.5}, "expand_ratio"),
                                          ({"crop_min_scale": 0}, "crop_min_scale"),
                                          ({"flip_prob": 2}, "flip_prob"), ({"crop_aspect": (2, 1)}, "crop_aspect")])
def test_bad_settings_name_the_argument(kwargs, word):
    kwargs = {"size": 8, **kwargs}
    with pytest.raises(ValueError, match=word):
        TrainTransform(**kwargs)


# -- Caffe's variants of three steps (photometric_variant, crop_variant, resize_variant) -------------
def _hue_only(variant, hue):
    """A distortion that changes the hue by ``hue`` only (degrees for minissd, OpenCV units for caffe)."""
    from minissd.data.transforms import _Distortion

    d = _Distortion(np.random.default_rng(0), prob=0.0, variant=variant)
    d.hue, d.contrast_first = hue, True
    return d


def test_caffe_hue_clamps_below_red_where_minissd_wraps():
    # (255, 43, 0) has hue 10 degrees. minissd turns it by -18 degrees to -8 = 352 degrees: a red with some
    # blue. Caffe adds -10 OpenCV units (-20 degrees) to the 8-bit hue 5 and saturates at 0: pure red.
    image = np.full((4, 4, 3), (255, 43, 0), np.uint8)
    wrapped = _hue_only("minissd", -18.0)(image)[0, 0]
    clamped = _hue_only("caffe", -10)(image)[0, 0]
    assert wrapped[0] == 255 and wrapped[1] == 0 and wrapped[2] > 20
    assert tuple(clamped) == (255, 0, 0)


def test_caffe_hue_wraps_past_the_top_and_is_in_two_degree_units():
    # (255, 0, 43) has hue 350 degrees; +17 OpenCV units = +34 degrees -> 24 degrees, an orange: OpenCV's
    # HSV -> BGR reads the 8-bit hue modulo 180, so the top end wraps (179 + 18 never reaches 255).
    out = _hue_only("caffe", 17)(np.full((2, 2, 3), (255, 0, 43), np.uint8))[0, 0]
    assert out[0] == 255 and out[2] == 0 and 90 <= out[1] <= 115   # 24 degrees: G = 255 * 24 / 60 = 102
    # the same +17 read in minissd's degrees lands at 7 degrees: G = 255 * 7 / 60 = 30
    out = _hue_only("minissd", 17.0)(np.full((2, 2, 3), (255, 0, 43), np.uint8))[0, 0]
    assert out[0] == 255 and out[2] == 0 and 10 <= out[1] <= 40   # (Pillow quantises the hue to 256 steps)


def test_caffe_hue_delta_is_truncated_to_whole_units():
    from minissd.data.transforms import _Distortion

    hues = [_Distortion(np.random.default_rng(s), prob=1.0, hue_delta=18.0, variant="caffe").hue for s in range(200)]
    assert all(isinstance(h, int) and -17 <= h <= 17 for h in hues) and min(hues) < -10 and max(hues) > 10
    minissd = [_Distortion(np.random.default_rng(s), prob=1.0, hue_delta=18.0).hue for s in range(200)]
    assert [int(h) for h in minissd] == hues   # the same draws, read in other units


def test_caffe_crop_accepts_a_patch_without_any_object_centre():
    # one object covering the whole image: a patch of scale s has IoU s^2 with it, so min IoU 0.1 accepts
    # every s >= 0.32, most of which miss the centre (50, 50). minissd's rule rejects those.
    boxes = np.array([[0.0, 0.0, 100.0, 100.0]])

    def has_centre(p):
        return p[0] <= 50 <= p[2] and p[1] <= 50 <= p[3]

    caffe = [sample_crop(boxes, 100, 100, np.random.default_rng(s), min_ious=(0.1,), require_centre=False)
             for s in range(40)]
    minissd = [sample_crop(boxes, 100, 100, np.random.default_rng(s), min_ious=(0.1,)) for s in range(40)]
    assert any(not has_centre(p) for p in caffe)
    assert all(has_centre(p) for p in minissd)
    for p in caffe:   # the IoU is still tested
        assert iou(np.array([p]), boxes)[0, 0] >= 0.1 - 1e-12


def test_caffe_crop_can_keep_no_object():
    image = np.full((100, 100, 3), 90, np.uint8)
    boxes = np.array([[0.0, 0.0, 100.0, 100.0]], np.float32)
    labels = np.array([1])
    kept = {"caffe": [], "minissd": []}
    for variant in kept:
        t = TrainTransform(32, photometric=False, expand=False, flip=False, crop_variant=variant)
        for s in range(60):
            _, b, lab = t(image, boxes, labels, np.random.default_rng(s))
            assert len(b) == len(lab)
            kept[variant].append(len(b))
    assert 0 in kept["caffe"] and 0 not in kept["minissd"]


def test_caffe_resize_draws_one_of_five_filters_per_image():
    from minissd.data.transforms import CAFFE_RESIZE_FILTERS

    rng0 = np.random.default_rng(9)
    image = rng0.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    t = TrainTransform(24, mean=0.0, std=1.0, photometric=False, expand=False, crop=False, flip=False,
                       resize_variant="caffe")
    used = set()
    for s in range(40):
        chw, _, _ = t(image, np.zeros((0, 4)), np.zeros(0, int), np.random.default_rng(s))
        k = int(np.random.default_rng(s).integers(5))   # the transform's only draw
        expected = render(image, 24, t.fill, resample=CAFFE_RESIZE_FILTERS[k])
        np.testing.assert_array_equal(chw, expected.transpose(2, 0, 1).astype(np.float32))
        used.add(k)
    assert used == set(range(5))
    plain = TrainTransform(24, mean=0.0, std=1.0, photometric=False, expand=False, crop=False, flip=False)
    chw, _, _ = plain(image, np.zeros((0, 4)), np.zeros(0, int), np.random.default_rng(0))
    np.testing.assert_array_equal(chw, render(image, 24, plain.fill).transpose(2, 0, 1).astype(np.float32))


def test_minissd_variants_are_the_default_and_unchanged_by_the_options():
    image, boxes = _channel_boxes_image(np.random.default_rng(4), 90, 120, 3)
    labels = np.arange(3)
    a = TrainTransform(48)(image, boxes, labels, np.random.default_rng(11))
    b = TrainTransform(48, photometric_variant="minissd", crop_variant="minissd", resize_variant="minissd")(
        image, boxes, labels, np.random.default_rng(11))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert repr(TrainTransform(48)) == "TrainTransform(size=48, steps=['photometric', 'expand', 'crop', 'flip'])"


@pytest.mark.parametrize("name", ["photometric_variant", "crop_variant", "resize_variant"])
def test_unknown_variant_names_the_argument(name):
    with pytest.raises(ValueError, match=name):
        TrainTransform(32, **{name: "opencv"})

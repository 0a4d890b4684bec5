"""minissd.convert: torchvision ssd300_vgg16 weights -> minissd SSD300.

torchvision is not needed for most of these: a synthetic state dict with torchvision's key names and
shapes (written out below from torchvision/models/detection/ssd.py) is converted, and a functional
PyTorch replay of torchvision's forward (its module order, F.normalize, its head permutation) checks
the result. The last test uses real torchvision where it is installed (the GPU machine).
"""
import math

import numpy as np
import pytest

from conftest import requires_torch
from minissd.convert import (
    COCO_CLASS_NAMES,
    convert_file,
    convert_state_dict,
    torchvision_key_map,
    torchvision_model_config,
)
from minissd.model import load_model

try:
    import torchvision  # noqa: F401

    HAS_TORCHVISION = True
except Exception:
    HAS_TORCHVISION = False

# torchvision's SSDFeatureExtractorVGG / SSDHead for ssd300_vgg16: key prefix -> (in, out, kernel).
_TV_CONVS = {
    "backbone.features.0": (3, 64, 3), "backbone.features.2": (64, 64, 3),
    "backbone.features.5": (64, 128, 3), "backbone.features.7": (128, 128, 3),
    "backbone.features.10": (128, 256, 3), "backbone.features.12": (256, 256, 3),
    "backbone.features.14": (256, 256, 3), "backbone.features.17": (256, 512, 3),
    "backbone.features.19": (512, 512, 3), "backbone.features.21": (512, 512, 3),
    "backbone.extra.0.1": (512, 512, 3), "backbone.extra.0.3": (512, 512, 3), "backbone.extra.0.5": (512, 512, 3),
    "backbone.extra.0.7.1": (512, 1024, 3), "backbone.extra.0.7.3": (1024, 1024, 1),
    "backbone.extra.1.0": (1024, 256, 1), "backbone.extra.1.2": (256, 512, 3),
    "backbone.extra.2.0": (512, 128, 1), "backbone.extra.2.2": (128, 256, 3),
    "backbone.extra.3.0": (256, 128, 1), "backbone.extra.3.2": (128, 256, 3),
    "backbone.extra.4.0": (256, 128, 1), "backbone.extra.4.2": (128, 256, 3),
}
_IN = [512, 1024, 512, 256, 256, 256]
_ANCHORS = [4, 6, 6, 6, 4, 4]


def synthetic_torchvision_state(rng, num_classes=91):
    state = {}
    convs = dict(_TV_CONVS)
    for k, (c, a) in enumerate(zip(_IN, _ANCHORS, strict=True)):
        convs[f"head.regression_head.module_list.{k}"] = (c, 4 * a, 3)
        convs[f"head.classification_head.module_list.{k}"] = (c, num_classes * a, 3)
    for prefix, (cin, cout, k) in convs.items():
        w = rng.standard_normal((cout, cin, k, k)) * math.sqrt(2 / (cin * k * k))
        state[f"{prefix}.weight"] = w.astype(np.float32)
        state[f"{prefix}.bias"] = (0.01 * rng.standard_normal(cout)).astype(np.float32)
    state["backbone.scale_weight"] = rng.uniform(10, 30, 512).astype(np.float32)
    return state


def torchvision_forward(state, x):
    """torchvision ssd300_vgg16's backbone + head, replayed with torch.nn.functional on ``state``."""
    import torch
    import torch.nn.functional as F

    p = {k: torch.as_tensor(v) for k, v in state.items()}

    def conv(t, prefix, stride=1, padding=1, dilation=1):
        return F.relu(F.conv2d(t, p[f"{prefix}.weight"], p[f"{prefix}.bias"], stride, padding, dilation))

    t = torch.as_tensor(x)
    for i in (0, 2):
        t = conv(t, f"backbone.features.{i}")
    t = F.max_pool2d(t, 2, 2)
    for i in (5, 7):
        t = conv(t, f"backbone.features.{i}")
    t = F.max_pool2d(t, 2, 2)
    for i in (10, 12, 14):
        t = conv(t, f"backbone.features.{i}")
    t = F.max_pool2d(t, 2, 2, ceil_mode=True)  # torchvision patches maxpool3's ceil_mode
    for i in (17, 19, 21):
        t = conv(t, f"backbone.features.{i}")
    feats = [p["backbone.scale_weight"].view(1, -1, 1, 1) * F.normalize(t)]
    t = F.max_pool2d(t, 2, 2)
    for i in (1, 3, 5):
        t = conv(t, f"backbone.extra.0.{i}")
    t = F.max_pool2d(t, 3, 1, 1)
    t = conv(t, "backbone.extra.0.7.1", padding=6, dilation=6)
    t = conv(t, "backbone.extra.0.7.3", padding=0)
    feats.append(t)
    for block in (1, 2, 3, 4):
        t = conv(t, f"backbone.extra.{block}.0", padding=0)
        t = conv(t, f"backbone.extra.{block}.2", stride=2 if block <= 2 else 1, padding=1 if block <= 2 else 0)
        feats.append(t)
    outs = []
    for head, cols in (("regression_head", 4), ("classification_head", None)):
        parts = []
        for k, f in enumerate(feats):
            r = F.conv2d(f, p[f"head.{head}.module_list.{k}.weight"], p[f"head.{head}.module_list.{k}.bias"],
                         padding=1)
            n, _, h, w = r.shape
            K = cols or r.shape[1] // _ANCHORS[k]
            parts.append(r.view(n, -1, K, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, K))
        outs.append(torch.cat(parts, 1).numpy())
    return outs


def torchvision_default_boxes_cxcywh():
    """DefaultBoxGenerator's boxes for ssd300_vgg16, normalised cxcywh: (w, h) clamped to [0, 1], centres not."""
    scales = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    steps, maps = [8, 16, 32, 64, 100, 300], [38, 19, 10, 5, 3, 1]
    boxes = []
    for k, f in enumerate(maps):
        wh = [(scales[k], scales[k]), (math.sqrt(scales[k] * scales[k + 1]),) * 2]
        for r in ratios[k]:
            w, h = scales[k] * math.sqrt(r), scales[k] / math.sqrt(r)
            wh += [(w, h), (h, w)]
        for j in range(f):
            cy = (j + 0.5) / (300 / steps[k])
            for i in range(f):
                cx = (i + 0.5) / (300 / steps[k])
                boxes += [[cx, cy, min(w, 1.0), min(h, 1.0)] for w, h in wh]
    return np.array(boxes)


def test_key_map_covers_every_parameter_once():
    key_map = torchvision_key_map()
    assert len(key_map) == 2 * len(_TV_CONVS) + 1 + 2 * 2 * 6 == 71
    assert len(set(key_map.values())) == len(key_map)
    assert key_map["backbone.extra.0.7.1.weight"] == "trunk.fc6.W"
    assert key_map["head.classification_head.module_list.5.bias"] == "conf.conv11_2.b"


def test_default_boxes_are_torchvisions():
    from minissd.model import SSD

    model = SSD(torchvision_model_config(), 3, np.random.default_rng(0))
    expected = torchvision_default_boxes_cxcywh()
    assert model.priors_cxcywh.shape == expected.shape == (8732, 4)
    np.testing.assert_allclose(model.priors_cxcywh, expected, rtol=0, atol=1e-12)
    # torchvision clamps (w, h) only: the 10x10 map's last column keeps its centre (9 + 0.5) * 32 / 300.
    assert model.priors_cxcywh[:, 0].max() == pytest.approx(9.5 * 32 / 300)


@requires_torch
def test_converted_synthetic_model_reproduces_torchvisions_head_outputs(rng):
    state = synthetic_torchvision_state(rng, num_classes=91)
    model, meta = convert_state_dict(state)
    assert meta["class_names"] == COCO_CLASS_NAMES and model.num_classes == 91
    np.testing.assert_allclose(meta["input_mean"], [122.99925, 116.9991, 103.9992])
    x = rng.standard_normal((1, 3, 300, 300)).astype(np.float32)
    model.eval()
    loc, conf = model.forward(x)
    tv_loc, tv_conf = torchvision_forward(state, x)
    for name, ours, ref in (("loc", loc, tv_loc), ("conf", conf, tv_conf)):
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"


def test_bad_state_dicts_are_refused(rng):
    state = synthetic_torchvision_state(rng, num_classes=3)
    bad = dict(state)
    del bad["backbone.extra.0.7.1.weight"]
    with pytest.raises(ValueError, match=r"missing 'backbone\.extra\.0\.7\.1\.weight'"):
        convert_state_dict(bad)
    bad = dict(state, **{"backbone.extra.5.0.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'backbone\.extra\.5\.0\.weight' that ssd300_vgg16 does not have"):
        convert_state_dict(bad)
    bad = dict(state, **{"backbone.features.21.weight": np.zeros((512, 512, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"features\.21\.weight'\] has shape \(512, 512, 1, 1\).*trunk\.conv4_3\.W"):
        convert_state_dict(bad)
    with pytest.raises(ValueError, match="class_names has 1 names"):
        convert_state_dict(state, class_names=["only one"])


@requires_torch
def test_convert_file_writes_a_loadable_checkpoint(tmp_path, rng):
    import torch

    state = synthetic_torchvision_state(rng, num_classes=3)
    src = tmp_path / "tv.pth"
    torch.save({k: torch.as_tensor(v) for k, v in state.items()}, src)
    dst = convert_file(src, tmp_path / "ssd.npz", class_names=["cat", "dog"])
    model, meta = load_model(dst)
    assert meta["class_names"] == ["cat", "dog"] and meta["input_std"] == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(model.trunk["fc6"].params["W"], state["backbone.extra.0.7.1.weight"])
    np.testing.assert_array_equal(model.conf.children["conv4_3"].params["b"],
                                  state["head.classification_head.module_list.0.bias"])
    np.testing.assert_allclose(model.priors_cxcywh, torchvision_default_boxes_cxcywh(), atol=1e-12)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (pip install torch==2.14.1 "
                                                "torchvision==0.29.1 in a separate environment runs it on the CPU)")
def test_real_torchvision_ssd300_vgg16(rng):
    """torchvision's own model (random weights, no download) against its conversion: default boxes to 1e-6,
    loc/conf to 1e-5 relative, and the detections after NMS of both on the same images equal."""
    import torch
    from torchvision.models.detection import ssd300_vgg16
    from torchvision.models.detection.image_list import ImageList

    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    with torch.no_grad():
        tv.backbone.scale_weight.uniform_(10, 30)
        # Freshly initialised, the top scores all sit within 1e-6 of 1 and float32 rounding alone decides
        # which of two overlapping boxes NMS keeps; scaled down, they spread over 0.16 .. 0.77.
        for conv in tv.head.classification_head.module_list:
            conv.weight.mul_(0.2)
    model, _ = convert_state_dict(tv.state_dict())
    model.eval()
    images = rng.integers(0, 256, (2, 300, 300, 3)).astype(np.uint8)   # RGB, already 300 x 300
    x = (images.astype(np.float32) - np.float32(model.input_mean)) / np.float32(model.input_std)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))                    # (N, 3, 300, 300)
    batch = [torch.as_tensor(im).permute(2, 0, 1).float() / 255 for im in images]
    with torch.no_grad():
        tv_detections = tv(batch)                  # resize (identity at 300), normalise, forward, postprocess
        t = tv.transform(batch)[0].tensors
        feats = list(tv.backbone(t).values())
        head = tv.head(feats)
        anchors = tv.anchor_generator(ImageList(t, [(300, 300)] * 2), feats)[0].numpy()
    np.testing.assert_allclose(t.numpy(), x, rtol=0, atol=1e-4)       # the same network input
    loc, conf = model.forward(x)
    errs = {}
    for name, ours, ref in (("loc", loc, head["bbox_regression"].numpy()), ("conf", conf, head["cls_logits"].numpy())):
        errs[name] = float(np.abs(ours - ref).max() / np.abs(ref).max())
    a = anchors.astype(np.float64) / 300.0   # torchvision: pixel xyxy; minissd: normalised cxcywh
    tv_cxcywh = np.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2, a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], 1)
    errs["default_boxes_max_abs"] = float(np.abs(model.priors_cxcywh - tv_cxcywh).max())
    print(f"torchvision parity: {errs}")
    assert errs["loc"] <= 1e-5 and errs["conf"] <= 1e-5, errs
    assert errs["default_boxes_max_abs"] <= 1e-6, errs
    ours = model.detect(loc, conf)   # minissd's defaults are torchvision's: 0.01, 400, NMS 0.45, 200
    for n, (theirs, mine) in enumerate(zip(tv_detections, ours, strict=True)):
        tv_boxes, tv_labels, tv_scores = (theirs[k].numpy() for k in ("boxes", "labels", "scores"))
        assert len(mine.boxes) == len(tv_boxes) > 0, n
        # Scores within float32 rounding of each other may come in either order: pair each torchvision
        # detection with the closest unpaired one of ours of the same label, then compare.
        free = np.ones(len(mine.boxes), bool)
        for box, label, score in zip(tv_boxes, tv_labels, tv_scores, strict=True):
            dist = np.where(free & (mine.labels == label), np.abs(mine.boxes * 300.0 - box).max(1), np.inf)
            j = int(np.argmin(dist))
            assert dist[j] <= 1e-2, (n, box, label, score, dist[j])              # pixels
            # float32 rounding of a 35-layer network: the logits agree to 1e-5 of their largest (above),
            # so the softmax scores to a few 1e-6 (3.6e-6 seen once the CPU convolution ran in blocks)
            assert abs(mine.scores[j] - score) <= 1e-5, (n, mine.scores[j], score)
            free[j] = False


# ------------------------------------------------------------------------------------------------
# VGG16 trunks: torchvision's ImageNet vgg16 and the reduced-fc VGG16 file (issue 13)
# ------------------------------------------------------------------------------------------------
# torchvision.models.vgg16's features: conv index -> (in, out); pools (2x2 s2) at 4, 9, 16, 23, 30.
_VGG16_FEATURES = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
                   14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
                   26: (512, 512), 28: (512, 512)}
_POOL_AFTER = {2, 7, 14, 21, 28}   # conv indices followed by a max-pool
_CONV_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1",
               "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


def _he(rng, shape):
    """Uniform with He's variance 2 / fan_in (uniform draws are cheaper than normal ones: fc6 has 103M)."""
    a = np.float32(math.sqrt(6 / int(np.prod(shape[1:]))))
    w = rng.random(shape, dtype=np.float32)
    w -= np.float32(0.5)
    w *= 2 * a
    return w


def synthetic_vgg16_state(rng):
    """Random weights in the exact key layout and shapes of torchvision's ImageNet vgg16 state dict."""
    state = {}
    for index, (cin, cout) in _VGG16_FEATURES.items():
        state[f"features.{index}.weight"] = _he(rng, (cout, cin, 3, 3))
        state[f"features.{index}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    for index, (cin, cout) in ((0, (25088, 4096)), (3, (4096, 4096)), (6, (4096, 1000))):
        state[f"classifier.{index}.weight"] = _he(rng, (cout, cin))
        state[f"classifier.{index}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return state


def synthetic_reducedfc_state(rng):
    """Random weights in the layout of the reduced-fc VGG16 file: ``0.weight`` .. ``33.bias``."""
    state = {}
    convs = dict(_VGG16_FEATURES)
    convs.update({31: (512, 1024), 33: (1024, 1024)})
    for index, (cin, cout) in convs.items():
        k = 1 if index == 33 else 3
        state[f"{index}.weight"] = _he(rng, (cout, cin, k, k))
        state[f"{index}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return state


@pytest.fixture(scope="module")
def vgg16_state():
    # 138M parameters (fc6 alone is 4096 x 25088): built once for the tests of this module.
    return synthetic_vgg16_state(np.random.default_rng(16))


def _rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _minissd_trunk_outputs(model, x):
    """The ReLU'd output of every convolution of ``model``'s trunk, by name."""
    outs, h = {}, x
    for name, layer in model.trunk.children.items():
        h = layer.forward(h)
        if name.endswith("_relu"):
            outs[name[:-len("_relu")]] = h.copy()
    return outs


def test_fc6_fc7_decimation_takes_every_4th_filter_and_every_3rd_tap(vgg16_state):
    from minissd.convert import vgg16_trunk_from_torchvision

    arrays, meta = vgg16_trunk_from_torchvision(vgg16_state)
    fc6, fc7 = vgg16_state["classifier.0.weight"], vgg16_state["classifier.3.weight"]
    # Written from the definition, without a reshape: fc6's input j is pool5's (c, y, x) = j // 49,
    # (j % 49) // 7, j % 7, so tap (3i, 3k) of channel c is column 49 c + 7 (3 i) + 3 k.
    o, c, i, k = np.ix_(np.arange(1024), np.arange(512), np.arange(3), np.arange(3))
    np.testing.assert_array_equal(arrays["trunk.fc6.W"], fc6[4 * o, 49 * c + 21 * i + 3 * k])
    np.testing.assert_array_equal(arrays["trunk.fc6.b"], vgg16_state["classifier.0.bias"][0::4])
    rows, cols = np.ix_(np.arange(1024), np.arange(1024))
    np.testing.assert_array_equal(arrays["trunk.fc7.W"][:, :, 0, 0], fc7[4 * rows, 4 * cols])
    np.testing.assert_array_equal(arrays["trunk.fc7.b"], vgg16_state["classifier.3.bias"][0::4])
    assert arrays["trunk.fc6.W"].shape == (1024, 512, 3, 3) and arrays["trunk.fc7.W"].shape == (1024, 1024, 1, 1)
    assert not any(k.startswith("classifier") for k in arrays)   # fc8 dropped
    np.testing.assert_allclose(meta["input_mean"], [123.675, 116.28, 103.53])
    np.testing.assert_allclose(meta["input_std"], [58.395, 57.12, 57.375])
    assert meta["input"]["channel_order"] == "RGB" and meta["input"]["scale"] == "0..255"


@requires_torch
def test_torchvision_vgg16_trunk_equals_plain_torch_vgg16(vgg16_state, rng, tmp_path):
    """conv1_1 .. conv5_3 equal a torch VGG16 fed torchvision's way; fc6/fc7 equal the paper's atrous layers."""
    import torch
    import torch.nn.functional as F

    from minissd.convert import convert_vgg16_file, load_trunk
    from minissd.model import build_model

    np.savez(tmp_path / "vgg16.npz", **vgg16_state)
    path = convert_vgg16_file(tmp_path / "vgg16.npz", tmp_path / "trunk.npz")
    model = build_model("ssd300", 21, np.random.default_rng(0)).eval()
    meta = load_trunk(model, path)

    size = 160   # every pooled size even, so SSD's ceil-mode pool3 and VGG16's floor pool3 agree
    pixels = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)   # RGB, 0..255
    ours = _minissd_trunk_outputs(model, np.ascontiguousarray(
        ((pixels - np.float32(meta["input_mean"])) / np.float32(meta["input_std"])).transpose(0, 3, 1, 2)))

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    t = (torch.as_tensor(pixels).permute(0, 3, 1, 2) / 255.0 - mean) / std   # torchvision's preprocessing
    p = {k: torch.as_tensor(v) for k, v in vgg16_state.items()}
    errs = {}
    with torch.no_grad():
        for name, index in zip(_CONV_NAMES, _VGG16_FEATURES, strict=True):
            t = F.relu(F.conv2d(t, p[f"features.{index}.weight"], p[f"features.{index}.bias"], padding=1))
            errs[name] = _rel(ours[name], t.numpy())
            if index in _POOL_AFTER and index != 28:
                t = F.max_pool2d(t, 2, 2)
        # The paper's changes after conv5_3: pool5 3x3/s1/p1, fc6 as a 3x3 convolution with dilation 6
        # (every 4th filter, taps 0, 3, 6 of the 7x7 fc6), fc7 as a 1x1 convolution (every 4th row/column).
        t = F.max_pool2d(t, 3, 1, 1)
        w6 = p["classifier.0.weight"].view(4096, 512, 7, 7)[::4, :, ::3, ::3]
        t = F.relu(F.conv2d(t, w6, p["classifier.0.bias"][::4], padding=6, dilation=6))
        errs["fc6"] = _rel(ours["fc6"], t.numpy())
        w7 = p["classifier.3.weight"][::4, ::4].reshape(1024, 1024, 1, 1)
        t = F.relu(F.conv2d(t, w7, p["classifier.3.bias"][::4]))
        errs["fc7"] = _rel(ours["fc7"], t.numpy())
    assert ours["fc7"].shape == (1, 1024, 10, 10) and np.abs(ours["fc7"]).max() > 0
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"relative errors above 1e-5: {bad} (all: {errs})"


@requires_torch
def test_reducedfc_trunk_equals_the_bgr_caffe_network(rng, tmp_path):
    """The reduced-fc file's network fed Caffe's way (BGR, minus (104, 117, 123)) equals minissd fed RGB."""
    import torch
    import torch.nn.functional as F

    from minissd.convert import convert_vgg16_file, load_trunk
    from minissd.model import build_model

    state = synthetic_reducedfc_state(rng)
    torch.save({k: torch.as_tensor(v) for k, v in state.items()}, tmp_path / "vgg16_reducedfc.pth")
    path = convert_vgg16_file(tmp_path / "vgg16_reducedfc.pth", tmp_path / "trunk.npz")
    model = build_model("ssd300", 21, np.random.default_rng(0)).eval()
    meta = load_trunk(model, path)
    assert meta["input"] == {"channel_order": "RGB", "scale": "0..255", "mean": [123.0, 117.0, 104.0],
                             "std": [1.0, 1.0, 1.0]}
    assert meta["source_input"]["channel_order"] == "BGR" and meta["source_input"]["mean"] == [104.0, 117.0, 123.0]
    assert model.input_mean == (123.0, 117.0, 104.0) and model.input_std == (1.0, 1.0, 1.0)

    size = 150   # 150 -> 75 -> 38: pool3 rounds up, as in Caffe and ssd.pytorch ('C')
    pixels = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)   # RGB
    ours = _minissd_trunk_outputs(model, np.ascontiguousarray(
        ((pixels - np.float32(model.input_mean)) / np.float32(model.input_std)).transpose(0, 3, 1, 2)))
    bgr = pixels[..., ::-1] - np.float32([104.0, 117.0, 123.0])
    t = torch.as_tensor(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))
    p = {k: torch.as_tensor(v) for k, v in state.items()}
    errs = {}
    with torch.no_grad():
        for name, index in zip(_CONV_NAMES, _VGG16_FEATURES, strict=True):
            t = F.relu(F.conv2d(t, p[f"{index}.weight"], p[f"{index}.bias"], padding=1))
            errs[name] = _rel(ours[name], t.numpy())
            if index in _POOL_AFTER and index != 28:
                t = F.max_pool2d(t, 2, 2, ceil_mode=index == 14)
        t = F.max_pool2d(t, 3, 1, 1)
        t = F.relu(F.conv2d(t, p["31.weight"], p["31.bias"], padding=6, dilation=6))
        errs["fc6"] = _rel(ours["fc6"], t.numpy())
        t = F.relu(F.conv2d(t, p["33.weight"], p["33.bias"]))
        errs["fc7"] = _rel(ours["fc7"], t.numpy())
    assert ours["conv4_3"].shape[-1] == 19 and ours["fc7"].shape == (1, 1024, 9, 9)
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"relative errors above 1e-5: {bad} (all: {errs})"


@pytest.mark.parametrize("name", ["ssd300", "ssd512"])
def test_load_trunk_fills_the_trunk_only(name, rng, tmp_path):
    from minissd.convert import load_trunk, save_trunk, vgg16_trunk_from_reducedfc
    from minissd.model import build_model

    reduced = synthetic_reducedfc_state(rng)
    arrays, meta = vgg16_trunk_from_reducedfc(reduced)
    path = save_trunk(tmp_path / "trunk.npz", arrays, meta)
    model = build_model(name, 21, np.random.default_rng(3))
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    got = load_trunk(model, path)
    assert got["format"] == "minissd.trunk/1" and got["input_mean"] == [123.0, 117.0, 104.0]
    state = model.state_dict()
    for key, value in state.items():
        if key.startswith("trunk."):
            np.testing.assert_array_equal(value, arrays[key])
        else:   # extras, L2Norm and heads keep their fresh initialisation
            np.testing.assert_array_equal(value, before[key])
    assert {k for k in state if k.startswith("trunk.")} == set(arrays)
    np.testing.assert_array_equal(state["trunk.conv1_1.W"], reduced["0.weight"][:, ::-1])   # BGR -> RGB
    np.testing.assert_array_equal(state["trunk.fc6.W"], reduced["31.weight"])


def test_load_trunk_names_the_first_mismatch(rng, tmp_path):
    from minissd.checkpoint import save_checkpoint
    from minissd.convert import load_trunk, read_trunk, save_trunk, vgg16_trunk_from_reducedfc
    from minissd.model import build_model, save_model

    arrays, meta = vgg16_trunk_from_reducedfc(synthetic_reducedfc_state(rng))
    path = save_trunk(tmp_path / "trunk.npz", arrays, meta)
    with pytest.raises(ValueError, match=r"trunk\.npz' does not fit model 'small': trunk layer 0 \('conv1'\): "
                                         r"name is 'conv1_1' in the file"):
        load_trunk(build_model("small", 3), path)
    model = build_model("ssd300", 3)
    _, saved_meta = read_trunk(path)
    bad = dict(arrays, **{"trunk.conv4_2.W": np.zeros((512, 512, 1, 1), np.float32)})
    save_checkpoint(tmp_path / "bad.npz", bad, saved_meta)
    with pytest.raises(ValueError, match=r"'trunk\.conv4_2\.W' has shape \(512, 512, 1, 1\) in the file but "
                                         r"\(512, 512, 3, 3\) in the model"):
        load_trunk(model, tmp_path / "bad.npz")
    missing = {k: v for k, v in arrays.items() if k != "trunk.fc7.b"}
    save_checkpoint(tmp_path / "missing.npz", missing, saved_meta)
    with pytest.raises(ValueError, match=r"'trunk\.fc7\.b' \(shape \(1024,\)\) is missing"):
        load_trunk(model, tmp_path / "missing.npz")
    dilated = dict(saved_meta, trunk_config=[dict(s, dilation=1) if s["name"] == "fc6" else s
                                             for s in saved_meta["trunk_config"]])
    save_checkpoint(tmp_path / "dilation.npz", arrays, dilated)
    with pytest.raises(ValueError, match=r"trunk layer 18 \('fc6'\): dilation is 1 in the file but 6 in the model"):
        load_trunk(model, tmp_path / "dilation.npz")
    save_model(tmp_path / "whole.npz", model)
    with pytest.raises(ValueError, match="not a minissd trunk file .*load_weights_checked"):
        load_trunk(model, tmp_path / "whole.npz")
    with pytest.raises(ValueError, match="does not exist"):
        load_trunk(model, tmp_path / "none.npz")


def test_trunk_conversion_refuses_wrong_state_dicts(rng, vgg16_state):
    from minissd.convert import detect_kind, vgg16_trunk_from_reducedfc, vgg16_trunk_from_torchvision

    assert detect_kind(vgg16_state) == "vgg16"
    assert detect_kind(synthetic_reducedfc_state(rng)) == "vgg16_reducedfc"
    assert detect_kind(synthetic_torchvision_state(rng, 3)) == "ssd300_vgg16"
    with pytest.raises(ValueError, match="cannot tell what these weights are .*'conv.weight'"):
        detect_kind({"conv.weight": np.zeros(1)})
    bad = {k: v for k, v in vgg16_state.items() if k != "classifier.3.bias"}
    with pytest.raises(ValueError, match=r"missing 'classifier\.3\.bias'"):
        vgg16_trunk_from_torchvision(bad)
    bad = dict(vgg16_state, **{"features.1.running_mean": np.zeros(64)})
    with pytest.raises(ValueError, match="vgg16_bn"):
        vgg16_trunk_from_torchvision(bad)
    bad = dict(vgg16_state, **{"classifier.0.weight": np.zeros((4096, 512), np.float32)})
    with pytest.raises(ValueError, match=r"'classifier\.0\.weight'\] has shape \(4096, 512\); .* \(4096, 25088\)"):
        vgg16_trunk_from_torchvision(bad)
    reduced = synthetic_reducedfc_state(rng)
    bad = dict(reduced, **{"31.weight": np.zeros((1024, 512, 7, 7), np.float32)})
    with pytest.raises(ValueError, match=r"'31\.weight'\] has shape \(1024, 512, 7, 7\)"):
        vgg16_trunk_from_reducedfc(bad)
    with pytest.raises(ValueError, match=r"'35\.weight' that reduced-fc VGG16 does not have"):
        vgg16_trunk_from_reducedfc(dict(reduced, **{"35.weight": np.zeros(1)}))


def test_reading_a_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
    import sys

    from minissd.convert import read_state_dict

    (tmp_path / "w.pth").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
    with pytest.raises(ImportError, match=r"w\.pth .*needs PyTorch.*pip install torch"):
        read_state_dict(tmp_path / "w.pth")
    with pytest.raises(ValueError, match="does not exist"):
        read_state_dict(tmp_path / "none.pth")


def test_convert_cli_trunk_kinds(rng, tmp_path, capsys):
    from minissd.convert import main, read_trunk

    state = synthetic_reducedfc_state(rng)
    np.savez(tmp_path / "reduced.npz", **state)
    assert main([str(tmp_path / "reduced.npz"), str(tmp_path / "trunk.npz")]) == 0
    assert "VGG16 trunk from vgg16_reducedfc" in capsys.readouterr().out
    arrays, meta = read_trunk(tmp_path / "trunk.npz")
    np.testing.assert_array_equal(arrays["trunk.fc6.W"], state["31.weight"])
    assert meta["converted_from_file"].endswith("reduced.npz")
    assert main([str(tmp_path / "reduced.npz"), str(tmp_path / "x.npz"), "--kind", "vgg16"]) == 2
    assert "missing 'features.0.weight'" in capsys.readouterr().err
    assert main([str(tmp_path / "reduced.npz"), str(tmp_path / "x.npz"), "--class-names", "a,b"]) == 2
    assert "--class-names applies to ssd300_vgg16" in capsys.readouterr().err


def test_load_weights_checked_round_trip_and_mismatches(rng, tmp_path):
    from minissd.convert import load_weights_checked, save_trunk, vgg16_trunk_from_reducedfc
    from minissd.model import build_model, save_model

    source = build_model("ssd300", 4, np.random.default_rng(1))
    source.input_mean, source.input_std = (1.0, 2.0, 3.0), (4.0, 5.0, 6.0)
    path = save_model(tmp_path / "whole.npz", source, {"class_names": ["a", "b", "c"],
                                                       "input_mean": [1.0, 2.0, 3.0], "input_std": [4.0, 5.0, 6.0]})
    target = build_model("ssd300", 4, np.random.default_rng(2))
    meta = load_weights_checked(target, path)
    assert meta["class_names"] == ["a", "b", "c"]
    assert target.input_mean == (1.0, 2.0, 3.0) and target.input_std == (4.0, 5.0, 6.0)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key], value)

    with pytest.raises(ValueError, match=r"parameter 'conf\.conv4_3\.W' has shape \(84, 512, 3, 3\) in the model "
                                         r"but \(16, 512, 3, 3\)"):
        load_weights_checked(build_model("ssd300", 21), path)
    with pytest.raises(ValueError, match=r"whole\.npz' does not fit model 'ssd512': extras layer 5 \('conv10_2'\): "
                                         r"padding is 0 in the file but 1"):
        load_weights_checked(build_model("ssd512", 4), path)
    arrays, tmeta = vgg16_trunk_from_reducedfc(synthetic_reducedfc_state(rng))
    save_trunk(tmp_path / "trunk.npz", arrays, tmeta)
    with pytest.raises(ValueError, match="is a trunk file .*load_trunk"):
        load_weights_checked(target, tmp_path / "trunk.npz")


def test_load_weights_checked_takes_a_converted_torchvision_model_with_a_warning(rng, tmp_path):
    from minissd.convert import load_weights_checked
    from minissd.model import build_model, save_model

    state = synthetic_torchvision_state(rng, num_classes=91)
    model_tv, meta = convert_state_dict(state)
    path = save_model(tmp_path / "tv.npz", model_tv, meta)
    target = build_model("ssd300", 91)
    with pytest.warns(UserWarning, match="priors, clamp_priors_wh, clip_boxes_before_nms differ"):
        got = load_weights_checked(target, path)
    assert got["converted_from"].startswith("torchvision")
    np.testing.assert_array_equal(target.trunk["fc6"].params["W"], state["backbone.extra.0.7.1.weight"])
    np.testing.assert_allclose(target.input_mean, [122.99925, 116.9991, 103.9992])

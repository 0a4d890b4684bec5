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
from minissd.convert import (COCO_CLASS_NAMES, convert_file, convert_state_dict, torchvision_key_map,
                             torchvision_model_config)
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
    for k, (c, a) in enumerate(zip(_IN, _ANCHORS)):
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
    """DefaultBoxGenerator's boxes for ssd300_vgg16, normalised cxcywh, clamped as torchvision clamps."""
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
                boxes += [[cx, cy, w, h] for w, h in wh]
    return np.clip(np.array(boxes), 0, 1)


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


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (it is on the GPU machine)")
def test_real_torchvision_ssd300_vgg16(rng):
    # torchvision's own model, random weights (no download): head outputs and default boxes.
    import torch
    from torchvision.models.detection import ssd300_vgg16
    from torchvision.models.detection.image_list import ImageList

    torch.manual_seed(0)
    try:
        tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91)
    except TypeError:  # torchvision < 0.13
        tv = ssd300_vgg16(pretrained=False, pretrained_backbone=False, num_classes=91)
    tv.eval()
    with torch.no_grad():
        tv.backbone.scale_weight.uniform_(10, 30)
    model, _ = convert_state_dict(tv.state_dict())
    x = rng.standard_normal((2, 3, 300, 300)).astype(np.float32)
    with torch.no_grad():
        feats = list(tv.backbone(torch.as_tensor(x)).values())
        head = tv.head(feats)
        anchors = tv.anchor_generator(ImageList(torch.as_tensor(x), [(300, 300)] * 2), feats)[0].numpy()
    loc, conf = model.eval().forward(x)
    errs = {}
    for name, ours, ref in (("loc", loc, head["bbox_regression"].numpy()), ("conf", conf, head["cls_logits"].numpy())):
        errs[name] = float(np.abs(ours - ref).max() / np.abs(ref).max())
    # anchors are pixel xyxy; ours normalised cxcywh.
    a = anchors / 300.0
    tv_cxcywh = np.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2, a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]], 1)
    errs["default_boxes_max_abs"] = float(np.abs(model.priors_cxcywh - tv_cxcywh).max())
    print(f"torchvision parity: {errs}")
    assert errs["loc"] <= 1e-4 and errs["conf"] <= 1e-4, errs
    assert errs["default_boxes_max_abs"] <= 1e-5, errs

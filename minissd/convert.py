"""torchvision's ``ssd300_vgg16`` -> a minissd SSD300 checkpoint, so COCO weights run in minissd.

    python -m minissd.convert ssd300_vgg16_coco-b556d3b4.pth ssd300_coco.npz
    python -m minissd.detect --checkpoint ssd300_coco.npz photo.jpg

What maps to what (torchvision/models/detection/ssd.py, `SSDFeatureExtractorVGG` and `SSDHead`):

* ``backbone.features.{0,2,5,7,10,12,14,17,19,21}`` (VGG16 ``features`` up to conv4_3)
  -> ``trunk.conv1_1`` .. ``trunk.conv4_3``;
* ``backbone.extra.0.{1,3,5}`` (conv5_1..conv5_3 after pool4) -> ``trunk.conv5_1`` .. ``conv5_3``;
  ``backbone.extra.0.7.1`` / ``.7.3`` (fc6 dilated 3x3, fc7 1x1, after the 3x3/s1 pool5) -> ``trunk.fc6``/``fc7``;
* ``backbone.extra.{1..4}.{0,2}`` -> ``extras.conv8_1, conv8_2`` .. ``conv11_1, conv11_2``;
* ``backbone.scale_weight`` (512, init 20) -> ``l2norm.conv4_3.weight``;
* ``head.regression_head.module_list.k`` / ``head.classification_head.module_list.k`` -> ``loc.<source k>`` /
  ``conf.<source k>``; ``weight`` -> ``W``, ``bias`` -> ``b``.

The head weights need no permutation: torchvision reads a head's channels as (box a, column c) with
channel ``a * K + c`` and lays the outputs out as (N, H, W, A, K), as minissd does; its boxes per
location come in minissd's order too (ratio 1 at s_k, ratio 1 at sqrt(s_k s_k+1), then (r, 1/r) per
ratio), and its regression outputs are (dx, dy, dw, dh) with weights (10, 10, 5, 5) = 1 / variances
(0.1, 0.2), i.e. minissd's (t_cx, t_cy, t_w, t_h) with the same variances.

Two things differ from the authors' SSD300 and go into the converted config and metadata:

* default boxes: torchvision's scales are 0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05 (the authors' Caffe:
  0.1, 0.2, 0.37, ...), and it clamps (cx, cy, w, h) each to [0, 1]; the config carries these as a
  prior-config dict and ``clamp_priors_cxcywh``, so the converted model uses torchvision's exact boxes;
* input: torchvision resizes the image to 300x300 and computes (x / 255 - m) * 255 with
  m = (0.48235, 0.45882, 0.40784), i.e. pixel - (123.0, 117.0, 104.0) in RGB, 0..255 units, std 1;
  stored as ``input_mean``/``input_std`` (the keys `minissd.evaluate`/`detect` read).

PyTorch is needed only to read a .pth file; `convert_state_dict` also takes NumPy arrays.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .model import SSD, get_config, save_model

# COCO category names by torchvision label (1..90; "N/A" for the ids COCO leaves unused). Label 0
# is background, so these are minissd's class_names for num_classes = 91.
COCO_CLASS_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table",
    "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
assert len(COCO_CLASS_NAMES) == 90

# torchvision ssd300_vgg16: DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
# scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300]), clip=True.
TORCHVISION_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
TORCHVISION_MEAN01 = (0.48235, 0.45882, 0.40784)

_VGG_FEATURES = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
                 14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3"}
_SOURCES = ("conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2")


def torchvision_key_map() -> dict:
    """{torchvision state-dict key: minissd parameter name} for ssd300_vgg16."""
    pairs = {}

    def conv(tv_prefix, ours):
        pairs[f"{tv_prefix}.weight"] = f"{ours}.W"
        pairs[f"{tv_prefix}.bias"] = f"{ours}.b"

    for index, name in _VGG_FEATURES.items():
        conv(f"backbone.features.{index}", f"trunk.{name}")
    for index, name in ((1, "conv5_1"), (3, "conv5_2"), (5, "conv5_3")):
        conv(f"backbone.extra.0.{index}", f"trunk.{name}")
    conv("backbone.extra.0.7.1", "trunk.fc6")
    conv("backbone.extra.0.7.3", "trunk.fc7")
    for block, stage in zip(range(1, 5), range(8, 12)):
        conv(f"backbone.extra.{block}.0", f"extras.conv{stage}_1")
        conv(f"backbone.extra.{block}.2", f"extras.conv{stage}_2")
    pairs["backbone.scale_weight"] = "l2norm.conv4_3.weight"
    for k, source in enumerate(_SOURCES):
        conv(f"head.regression_head.module_list.{k}", f"loc.{source}")
        conv(f"head.classification_head.module_list.{k}", f"conf.{source}")
    return pairs


def torchvision_prior_config() -> dict:
    """torchvision's SSD300 default boxes as a minissd prior-config dict (sizes in pixels of 300)."""
    size = 300
    return {"image_size": size, "feature_maps": [38, 19, 10, 5, 3, 1], "steps": [8.0, 16.0, 32.0, 64.0, 100.0, 300.0],
            "min_sizes": [s * size for s in TORCHVISION_SCALES[:-1]],
            "max_sizes": [s * size for s in TORCHVISION_SCALES[1:]],
            "aspect_ratios": [[2.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0], [2.0]],
            "clip": False, "flip": True, "offset": 0.5, "name": "torchvision_ssd300"}


def torchvision_model_config() -> dict:
    """minissd's SSD300 network with torchvision's default boxes."""
    config = get_config("ssd300")
    config["name"] = "ssd300_torchvision"
    config["priors"] = torchvision_prior_config()
    config["clamp_priors_cxcywh"] = True
    return get_config(config)


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def convert_state_dict(state_dict: dict, class_names=None) -> tuple[SSD, dict]:
    """A minissd SSD300 (float32) holding the weights of a torchvision ``ssd300_vgg16`` state dict.

    Parameters
    ----------
    state_dict : mapping of torchvision key -> tensor or array
    class_names : list of str, optional
        The C object classes; default: COCO's 90 category names when the model has 91 classes.

    Returns
    -------
    model, meta : meta holds class_names, input_mean / input_std (0..255 RGB units) and the source.

    Raises ValueError naming the first missing, unexpected or mis-shaped key.
    """
    key_map = torchvision_key_map()
    missing = [k for k in key_map if k not in state_dict]
    if missing:
        raise ValueError(f"state_dict is missing {missing[0]!r} ({len(missing)} torchvision ssd300_vgg16 keys "
                         "missing in all); is this an ssd300_vgg16 state dict?")
    extra = [k for k in state_dict if k not in key_map]
    if extra:
        raise ValueError(f"state_dict has key {extra[0]!r} that ssd300_vgg16 does not have "
                         f"({len(extra)} unexpected in all)")
    cls0 = _to_numpy(state_dict["head.classification_head.module_list.0.weight"])
    if cls0.ndim != 4 or cls0.shape[0] % 4:
        raise ValueError(f"state_dict['head.classification_head.module_list.0.weight'] has shape {cls0.shape}; "
                         "expected (4 * num_classes, 512, 3, 3)")
    num_classes = cls0.shape[0] // 4
    if class_names is None:
        class_names = COCO_CLASS_NAMES if num_classes == 91 else [f"class_{i}" for i in range(1, num_classes)]
    class_names = [str(n) for n in class_names]
    if len(class_names) != num_classes - 1:
        raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes - 1} "
                         "object classes")

    model = SSD(torchvision_model_config(), num_classes, rng=np.random.default_rng(0), dtype=np.float32,
                input_mean=[255.0 * m for m in TORCHVISION_MEAN01], input_std=[1.0, 1.0, 1.0])
    own = {name: p for name, p, _ in model.named_parameters()}
    assert set(own) == set(key_map.values()), "key map and model disagree"  # a bug here, not bad input
    for tv_key, ours in key_map.items():
        value = _to_numpy(state_dict[tv_key])
        if tuple(value.shape) != tuple(own[ours].shape):
            raise ValueError(f"state_dict[{tv_key!r}] has shape {tuple(value.shape)} but minissd's {ours!r} "
                             f"needs {tuple(own[ours].shape)}")
        own[ours][...] = value.astype(np.float32)
    meta = {
        "class_names": class_names,
        "input_mean": [255.0 * m for m in TORCHVISION_MEAN01],
        "input_std": [1.0, 1.0, 1.0],
        "converted_from": "torchvision.models.detection.ssd300_vgg16",
    }
    return model, meta


def convert_file(src, dst, class_names=None) -> str:
    """Read a torchvision .pth state dict (PyTorch needed) and write a minissd checkpoint."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading a .pth file needs PyTorch: pip install torch") from err
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
    model, meta = convert_state_dict(state, class_names)
    meta["converted_from_file"] = str(src)
    return save_model(dst, model, meta)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minissd.convert",
        description="Convert torchvision's ssd300_vgg16 weights (.pth state dict) into a minissd checkpoint.")
    parser.add_argument("src", help="torchvision state dict, e.g. ssd300_vgg16_coco-b556d3b4.pth")
    parser.add_argument("dst", help="minissd checkpoint to write (.npz)")
    parser.add_argument("--class-names", help="comma-separated object class names (default: COCO's 90)")
    args = parser.parse_args(argv)
    names = args.class_names.split(",") if args.class_names else None
    path = convert_file(args.src, args.dst, names)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

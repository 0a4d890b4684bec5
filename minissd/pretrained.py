"""Pretrained weights -> minissd: torchvision's ``ssd300_vgg16``, and ImageNet VGG16 trunks.

The library half of ``python -m minissd.convert`` (minissd/convert.py, the command): reading PyTorch
state dicts, converting them, and loading the results into a model (`load_trunk` for ``--init``,
`load_weights_checked` for ``--weights`` of ``python -m minissd.train``).

    python -m minissd.convert ssd300_vgg16_coco-b556d3b4.pth ssd300_coco.npz
    python -m minissd.detect --checkpoint ssd300_coco.npz photo.jpg

    python -m minissd.convert vgg16-397923af.pth vgg16_trunk.npz          # torchvision ImageNet vgg16
    python -m minissd.convert vgg16_reducedfc.pth vgg16_trunk.npz         # the reduced-fc VGG16 file

The kind of file is recognised from its keys (``--kind`` names it explicitly). The two VGG16 kinds give
a *trunk file* (see "VGG16 trunks" below) that `load_trunk` loads into a fresh ssd300/ssd512; the
ssd300_vgg16 kind gives a whole model file that `minissd.model.load_model` or `load_weights_checked`
reads.

torchvision's ``ssd300_vgg16``
------------------------------

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
  0.1, 0.2, 0.37, ...), and its ``DefaultBoxGenerator(clip=True)`` clamps each (w, h) pair to [0, 1]
  but not the centres (the 10x10 map's last column is at (9 + 0.5) * 32 / 300 = 1.0133); the config
  carries these as a prior-config dict and ``clamp_priors_wh``, so the converted model uses
  torchvision's exact boxes;
* post-processing: torchvision clips the decoded boxes to the image *before* NMS (Caffe's
  DetectionOutput and minissd after it); the config's ``clip_boxes_before_nms`` does the same, so the
  detections after NMS are torchvision's too (same thresholds: score > 0.01, 400 per class, NMS 0.45,
  200 per image). One difference is left: torchvision caps the decoded width/height offsets at
  log(1000 / 16) (boxes at most 62.5 times their default box), which trained weights never reach;
* input: torchvision resizes the image to 300x300 and computes (x / 255 - m) * 255 with
  m = (0.48235, 0.45882, 0.40784), i.e. pixel - (123.0, 117.0, 104.0) in RGB, 0..255 units, std 1;
  stored as ``input_mean``/``input_std`` (the keys `minissd.evaluate`/`detect` read).

VGG16 trunks
------------
The paper fine-tunes from "the ILSVRC CLS-LOC pretrained VGG16" with fc6 and fc7 turned into
convolutions by subsampling their parameters (section 3, "Base network"; the authors' Caffe file is
VGG_ILSVRC_16_layers_fc_reduced). Two sources are read:

* torchvision's ImageNet ``vgg16`` state dict (``features.{0,2,...,28}`` = conv1_1 .. conv5_3;
  ``classifier.0`` = fc6 (4096, 25088), ``classifier.3`` = fc7 (4096, 4096), ``classifier.6`` = fc8,
  dropped). fc6 is decimated as the paper describes: its 25088 inputs are pool5's (512, 7, 7) map
  flattened channel-major, so the weight is viewed as (4096, 512, 7, 7) and every 4th filter and every
  3rd tap in each direction are kept -> (1024, 512, 3, 3), used with dilation 6 on the stride-1 pool5
  map (taps 3 apart on a map of twice the resolution). fc7 keeps every 4th row and every 4th column ->
  (1024, 1024, 1, 1). Biases keep every 4th entry. torchvision's input is RGB in 0..1, normalised
  with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225); minissd feeds RGB in 0..255 as
  (pixel - input_mean) / input_std, which is the same with input_mean = 255 mean, input_std = 255 std.
* the reduced-fc VGG16 file of ssd.pytorch (keys ``0.weight`` .. ``33.bias`` of its ``vgg`` list:
  conv1_1 .. conv5_3 at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, fc6 at 31, fc7 at 33, already
  (1024, 512, 3, 3) and (1024, 1024, 1, 1)). It was converted from Caffe, so its conv1_1 reads BGR
  pixels in 0..255 minus (104, 117, 123); minissd's images are RGB, so conv1_1's input channels are
  reversed and the mean becomes (123, 117, 104) in RGB order, std 1.

A trunk file is a `minissd.checkpoint` file with arrays ``trunk.conv1_1.W`` .. ``trunk.fc7.b`` and
metadata ``format`` ("minissd.trunk/1"), ``trunk_config`` (the layer specs it fits), ``input`` (the
convention the weights expect: channel order, scale, mean, std, as minissd feeds them), ``input_mean``
/ ``input_std`` and the source it came from.

PyTorch is needed only to read a .pth file; the functions below also take NumPy arrays, and a .npz
state dict is read without PyTorch.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
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
    for block, stage in zip(range(1, 5), range(8, 12), strict=True):
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
    config["clamp_priors_wh"] = True
    config["clip_boxes_before_nms"] = True
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


def read_state_dict(path) -> dict:
    """A state dict {key: array or tensor} from a PyTorch .pth file (PyTorch needed) or a .npz file.

    A .pth file holding ``{"model": state_dict, ...}`` (torchvision's reference scripts) gives the inner
    state dict. Raises ValueError naming the file when it is missing or holds no state dict, and
    ImportError saying how to install PyTorch when a .pth file is given without it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: weights file does not exist")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading {path} (a PyTorch file) needs PyTorch, which is not installed: "
                          "pip install torch (the CPU build is enough), or save the state dict as .npz") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds (pickle, zip, runtime) for a bad file
        raise ValueError(f"{path}: not a readable PyTorch state dict ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")  # noqa: TRY004 (bad file)
    return dict(state)


def convert_file(src, dst, class_names=None) -> str:
    """Read a torchvision ssd300_vgg16 .pth state dict (PyTorch needed) and write a minissd model file."""
    model, meta = convert_state_dict(read_state_dict(src), class_names)
    meta["converted_from_file"] = str(src)
    return save_model(dst, model, meta)


# ----------------------------------------------------------------------------------------------
# VGG16 trunks (ImageNet weights) for ssd300 / ssd512
# ----------------------------------------------------------------------------------------------
TRUNK_FORMAT = "minissd.trunk/1"
# torchvision.models.vgg16 (and the reduced-fc file, which keeps the same indices up to pool5).
_VGG16_CONVS = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
                14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1", 26: "conv5_2",
                28: "conv5_3"}
_REDUCEDFC_FC = {31: "fc6", 33: "fc7"}
# torchvision's ImageNet normalisation of RGB in 0..1 (torchvision.models.VGG16_Weights.IMAGENET1K_V1).
IMAGENET_MEAN01 = (0.485, 0.456, 0.406)
IMAGENET_STD01 = (0.229, 0.224, 0.225)
# Caffe's VGG16 mean pixel in BGR order (the reduced-fc file's preprocessing).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
TRUNK_KINDS = ("vgg16", "vgg16_reducedfc")
KINDS = ("ssd300_vgg16",) + TRUNK_KINDS


def vgg16_trunk_config() -> list:
    """The layer specs of SSD's VGG16 trunk (conv1_1 .. fc7, pool5 3x3/s1/p1, fc6 3x3 dilation 6)."""
    return get_config("ssd300")["trunk"]


def vgg16_trunk_shapes() -> dict:
    """{``trunk.<conv>.W`` / ``.b``: shape} for SSD's VGG16 trunk, in layer order."""
    shapes, channels = {}, 3
    for spec in vgg16_trunk_config():
        if spec["type"] == "conv":
            k = spec["kernel"]
            shapes[f"trunk.{spec['name']}.W"] = (spec["out"], channels, k, k)
            shapes[f"trunk.{spec['name']}.b"] = (spec["out"],)
            channels = spec["out"]
    return shapes


def decimate_fc6(weight, bias):
    """VGG16's fc6 (4096, 25088) -> SSD's fc6 (1024, 512, 3, 3): every 4th filter, every 3rd tap.

    Paper: section 3 ("Base network"): "subsample parameters from fc6 and fc7"; the 7x7 kernel over
    pool5's (512, 7, 7) input keeps taps 0, 3, 6 in each direction and is applied with dilation 6.
    """
    weight = np.asarray(weight)
    bias = np.asarray(bias)
    if weight.shape != (4096, 512 * 7 * 7) or bias.shape != (4096,):
        raise ValueError(f"fc6 must be (4096, 25088) with a (4096,) bias, got {weight.shape} and {bias.shape}")
    w = weight.reshape(4096, 512, 7, 7)                       # (out, C, KH, KW): the flatten order of pool5
    return np.ascontiguousarray(w[::4, :, ::3, ::3]), np.ascontiguousarray(bias[::4])


def decimate_fc7(weight, bias):
    """VGG16's fc7 (4096, 4096) -> SSD's fc7 (1024, 1024, 1, 1): every 4th row and every 4th column."""
    weight = np.asarray(weight)
    bias = np.asarray(bias)
    if weight.shape != (4096, 4096) or bias.shape != (4096,):
        raise ValueError(f"fc7 must be (4096, 4096) with a (4096,) bias, got {weight.shape} and {bias.shape}")
    return np.ascontiguousarray(weight[::4, ::4].reshape(1024, 1024, 1, 1)), np.ascontiguousarray(bias[::4])


def _check_keys(state, expected: dict, kind: str, ignore=()):
    """Missing / unexpected / mis-shaped keys of ``state`` against {key: shape}: ValueError on the first."""
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"state dict is missing {missing[0]!r} ({len(missing)} {kind} keys missing in all); "
                         f"is this a {kind} state dict?")
    extra = [k for k in state if k not in expected and k not in ignore]
    if extra:
        raise ValueError(f"state dict has key {extra[0]!r} that {kind} does not have ({len(extra)} unexpected in all)")
    for key, shape in expected.items():
        got = tuple(_to_numpy(state[key]).shape)
        if got != tuple(shape):
            raise ValueError(f"state dict[{key!r}] has shape {got}; {kind} has {tuple(shape)}")


def _first_spec_difference(part: str, mine: list, theirs: list) -> str | None:
    """``"<part> layer k ('name'): field is X in the file but Y in the model"`` for the first difference."""
    for k in range(max(len(mine), len(theirs))):
        a = mine[k] if k < len(mine) else None
        b = theirs[k] if k < len(theirs) else None
        if a == b:
            continue
        if a is None or b is None:
            return (f"{part} has {len(theirs)} layers in the file but {len(mine)} in the model "
                    f"(layer {k}: {b.get('name') if b else None!r} in the file, {a.get('name') if a else None!r} "
                    "in the model)")
        fields = [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
        what = "; ".join(f"{f} is {b.get(f)!r} in the file but {a.get(f)!r} in the model" for f in fields)
        return f"{part} layer {k} ({a.get('name')!r}): {what}"
    return None


def _input_meta(mean, std) -> dict:
    mean = [float(m) for m in mean]
    std = [float(s) for s in std]
    return {"input": {"channel_order": "RGB", "scale": "0..255", "mean": mean, "std": std},
            "input_mean": mean, "input_std": std}


def vgg16_trunk_from_torchvision(state_dict: dict) -> tuple[dict, dict]:
    """SSD's VGG16 trunk from torchvision's ImageNet ``vgg16`` state dict.

    Parameters
    ----------
    state_dict : mapping with ``features.{0..28}.weight/bias`` and ``classifier.{0,3,6}.weight/bias``
        (tensors or arrays; ``classifier.6``, fc8, is dropped).

    Returns
    -------
    arrays : {``trunk.conv1_1.W`` .. ``trunk.fc7.b``: float32 array}
    meta : the trunk file's metadata (input convention: RGB, 0..255, mean 255 * ImageNet mean,
        std 255 * ImageNet std).
    """
    shapes = vgg16_trunk_shapes()
    expected = {}
    for index, name in _VGG16_CONVS.items():
        expected[f"features.{index}.weight"] = shapes[f"trunk.{name}.W"]
        expected[f"features.{index}.bias"] = shapes[f"trunk.{name}.b"]
    expected.update({"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                     "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)})
    if any(k.endswith("running_mean") for k in state_dict):
        raise ValueError("state dict has batch-norm statistics (a vgg16_bn?); only the plain vgg16 is supported")
    _check_keys(state_dict, expected, "torchvision vgg16", ignore=("classifier.6.weight", "classifier.6.bias"))
    arrays = {}
    for index, name in _VGG16_CONVS.items():
        arrays[f"trunk.{name}.W"] = _to_numpy(state_dict[f"features.{index}.weight"])
        arrays[f"trunk.{name}.b"] = _to_numpy(state_dict[f"features.{index}.bias"])
    arrays["trunk.fc6.W"], arrays["trunk.fc6.b"] = decimate_fc6(_to_numpy(state_dict["classifier.0.weight"]),
                                                                _to_numpy(state_dict["classifier.0.bias"]))
    arrays["trunk.fc7.W"], arrays["trunk.fc7.b"] = decimate_fc7(_to_numpy(state_dict["classifier.3.weight"]),
                                                                _to_numpy(state_dict["classifier.3.bias"]))
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    meta = _input_meta([255.0 * m for m in IMAGENET_MEAN01], [255.0 * s for s in IMAGENET_STD01])
    meta.update(converted_from="torchvision.models.vgg16 (ImageNet); fc6/fc7 decimated (paper section 3)",
                source_input={"channel_order": "RGB", "scale": "0..1", "mean": list(IMAGENET_MEAN01),
                              "std": list(IMAGENET_STD01)})
    return arrays, meta


def vgg16_trunk_from_reducedfc(state_dict: dict) -> tuple[dict, dict]:
    """SSD's VGG16 trunk from the reduced-fc VGG16 file (keys ``0.weight`` .. ``33.bias``, Caffe BGR).

    conv1_1's input channels are reversed (BGR -> RGB); the input convention becomes RGB, 0..255,
    mean (123, 117, 104), std 1. Everything else is copied as it is.
    """
    shapes = vgg16_trunk_shapes()
    names = {**_VGG16_CONVS, **_REDUCEDFC_FC}
    expected = {}
    for index, name in names.items():
        expected[f"{index}.weight"] = shapes[f"trunk.{name}.W"]
        expected[f"{index}.bias"] = shapes[f"trunk.{name}.b"]
    _check_keys(state_dict, expected, "reduced-fc VGG16")
    arrays = {}
    for index, name in names.items():
        arrays[f"trunk.{name}.W"] = _to_numpy(state_dict[f"{index}.weight"])
        arrays[f"trunk.{name}.b"] = _to_numpy(state_dict[f"{index}.bias"])
    arrays["trunk.conv1_1.W"] = arrays["trunk.conv1_1.W"][:, ::-1]   # (64, 3, 3, 3): input channels BGR -> RGB
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    meta = _input_meta(CAFFE_MEAN_BGR[::-1], (1.0, 1.0, 1.0))
    meta.update(converted_from="reduced-fc VGG16 (ssd.pytorch's vgg16_reducedfc, from Caffe's "
                               "VGG_ILSVRC_16_layers_fc_reduced); conv1_1 channels BGR -> RGB",
                source_input={"channel_order": "BGR", "scale": "0..255", "mean": list(CAFFE_MEAN_BGR),
                              "std": [1.0, 1.0, 1.0]})
    return arrays, meta


def detect_kind(state_dict: dict) -> str:
    """"ssd300_vgg16", "vgg16" or "vgg16_reducedfc" from a state dict's keys; ValueError otherwise."""
    if "backbone.features.0.weight" in state_dict:
        return "ssd300_vgg16"
    if "features.0.weight" in state_dict and "classifier.0.weight" in state_dict:
        return "vgg16"
    if "0.weight" in state_dict and "33.weight" in state_dict:
        return "vgg16_reducedfc"
    first = next(iter(state_dict), None)
    raise ValueError(f"cannot tell what these weights are (first key {first!r}); expected torchvision's "
                     "ssd300_vgg16 (backbone.*), torchvision's vgg16 (features.*, classifier.*) or the reduced-fc "
                     "VGG16 (0.weight .. 33.bias)")


def save_trunk(path, arrays: dict, meta: dict) -> str:
    """Write a trunk file (arrays ``trunk.*``, metadata with the input convention); returns the path."""
    meta = dict(meta, format=TRUNK_FORMAT, trunk="vgg16_reduced", trunk_config=vgg16_trunk_config())
    return save_checkpoint(path, arrays, meta)


def convert_vgg16_file(src, dst, kind: str | None = None) -> str:
    """Read a torchvision ``vgg16`` or reduced-fc VGG16 state dict (.pth or .npz), write a trunk file."""
    state = read_state_dict(src)
    kind = kind or detect_kind(state)
    if kind == "vgg16":
        arrays, meta = vgg16_trunk_from_torchvision(state)
    elif kind == "vgg16_reducedfc":
        arrays, meta = vgg16_trunk_from_reducedfc(state)
    else:
        raise ValueError(f"kind must be one of {TRUNK_KINDS} for a trunk, got {kind!r}")
    meta["converted_from_file"] = str(src)
    return save_trunk(dst, arrays, meta)


def read_trunk(path) -> tuple[dict, dict]:
    """``(arrays, meta)`` of a trunk file; CheckpointError (a ValueError) naming the file otherwise."""
    arrays, meta = load_checkpoint(path)
    if meta.get("format") != TRUNK_FORMAT:
        hint = (" (it is a whole model file: load it with load_weights_checked / --weights)"
                if "config" in meta else "")
        raise CheckpointError(f"{os.fspath(path)!r} is not a minissd trunk file (format "
                              f"{meta.get('format')!r}, expected {TRUNK_FORMAT!r}){hint}")
    return arrays, meta


def _set_input_convention(model, meta: dict) -> None:
    """The file's input normalisation onto the model (top-level metadata first, then its config)."""
    for source in (meta, meta.get("config") or {}):
        if source.get("input_mean") is not None and source.get("input_std") is not None:
            model.input_mean = tuple(float(v) for v in source["input_mean"])
            model.input_std = tuple(float(v) for v in source["input_std"])
            return


def load_trunk(model: SSD, path) -> dict:
    """Load a trunk file into ``model``'s trunk, in place; extras, L2Norm and heads stay as they are.

    The model must have SSD's VGG16 trunk (ssd300, ssd512): its trunk layer specs are compared with the
    file's (so a dilation or pooling difference, which shapes would not show, is caught) and then every
    trunk parameter's name and shape. ``model.input_mean`` / ``model.input_std`` are set to the file's
    input convention.

    Returns
    -------
    The file's metadata: ``input`` {channel_order, scale, mean, std}, ``input_mean``, ``input_std``,
    ``converted_from``, ...

    Raises
    ------
    ValueError (CheckpointError) naming the file and the first layer or parameter that does not fit.
    """
    arrays, meta = read_trunk(path)
    where = f"trunk file {os.fspath(path)!r}"
    difference = _first_spec_difference("trunk", model.config["trunk"], meta.get("trunk_config") or [])
    if difference:
        raise CheckpointError(f"{where} does not fit model {model.config['name']!r}: {difference}")
    own = [(name, p) for name, p, _ in model.named_parameters() if name.startswith("trunk.")]
    for name, param in own:
        if name not in arrays:
            raise CheckpointError(f"{where} does not fit model {model.config['name']!r}: {name!r} "
                                  f"(shape {tuple(param.shape)}) is missing from it")
        if tuple(arrays[name].shape) != tuple(param.shape):
            raise CheckpointError(f"{where} does not fit model {model.config['name']!r}: {name!r} has shape "
                                  f"{tuple(arrays[name].shape)} in the file but {tuple(param.shape)} in the model")
    names = {name for name, _ in own}
    extra = [k for k in arrays if k not in names]
    if extra:
        raise CheckpointError(f"{where} has {extra[0]!r}, which is not a trunk parameter of model "
                              f"{model.config['name']!r}")
    model.trunk.load_state_dict({name[len("trunk."):]: arrays[name] for name in names})
    model.clear_cache()
    _set_input_convention(model, meta)
    return meta


# Config entries that change no parameter shape but change what the weights mean.
_SHAPELESS_KEYS = ("priors", "clamp_priors_cxcywh", "clamp_priors_wh", "clip_boxes_before_nms", "variances",
                   "image_size")


def load_weights_checked(model: SSD, path) -> dict:
    """Load a whole minissd model file (e.g. a converted torchvision ssd300_vgg16) into ``model``, in place.

    Checks, in order: the file's trunk and extras layer specs, sources, L2Norm layers and head kernel
    equal the model's (naming the first layer that differs); every parameter's name and shape (naming the
    first that is missing or has another shape, with both shapes). Differences that change no shape
    (default boxes, variances, input size) are allowed, since fine-tuning from such weights is legitimate,
    and reported with a UserWarning. ``model.input_mean`` / ``input_std`` are set from the file's
    metadata when it has them.

    Returns the file's metadata. Raises ValueError (CheckpointError) naming the file and the mismatch.
    """
    from .model.saving import load_weights

    arrays, meta = load_checkpoint(path)
    where = f"weights file {os.fspath(path)!r}"
    if meta.get("format") == TRUNK_FORMAT:
        raise CheckpointError(f"{where} is a trunk file (VGG16 conv1_1 .. fc7 only): load it with load_trunk / --init")
    config = meta.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} has no model config in its metadata (not written by save_model)")
    for part in ("trunk", "extras"):
        difference = _first_spec_difference(part, model.config[part], config.get(part) or [])
        if difference:
            raise CheckpointError(f"{where} does not fit model {model.config['name']!r}: {difference}")
    for key in ("sources", "l2norm", "head_kernel", "boxes_per_location"):
        a, b = model.config.get(key), config.get(key)
        if key == "l2norm":
            a, b = sorted((a or {}).keys()), sorted((b or {}).keys())
        if a != b:
            raise CheckpointError(f"{where} does not fit model {model.config['name']!r}: {key} is {b} in the "
                                  f"file but {a} in the model")
    load_weights(model, arrays, where)
    differ = [key for key in _SHAPELESS_KEYS if model.config.get(key) != config.get(key)]
    if differ:
        warnings.warn(f"{where}: {', '.join(differ)} differ(s) from model {model.config['name']!r} "
                      f"(the file's weights were trained with {config.get('name')!r}'s); loaded anyway",
                      UserWarning, stacklevel=2)
    _set_input_convention(model, meta)
    return meta

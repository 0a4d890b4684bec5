"""Network configurations as plain data: SSD300 and SSD512 (the paper's) and the small CPU model.

A config is a JSON-able dict, stored in every checkpoint, from which `build_model` builds the network:

* ``trunk`` and ``extras``: the feature path, in order, as layer specs. A ``conv`` spec is always
  followed by a ReLU (the paper puts one after every convolution of the trunk and extras); a
  ``pool`` spec is a max-pool.
* ``sources``: the names of the convolutions whose (ReLU'd) outputs feed the heads, shallow to deep.
  Their spatial sizes must equal the ``feature_maps`` of the prior config.
* ``l2norm``: ``{source name: initial scale}`` for the sources that go through L2Norm first
  (conv4_3 in SSD300/512, scale 20; paper section 3.1 "PASCAL VOC2007", following ParseNet).
* ``priors``: a name in `minissd.priors.PRIOR_CONFIGS` or a dict of `PriorConfig` fields.
* ``boxes_per_location``: k per source; checked against the prior config when the model is built.
* ``init``: weight initialisation per part ("xavier" or "he"); biases start at 0.
* ``input_mean``, ``input_std``: the input normalisation ``(pixel - mean) / std`` per RGB channel, in
  0..255 units; part of the weights (they only work on inputs normalised the way they were trained).
  Optional in a config dict (configs stored by older checkpoints lack them): `input_normalisation`
  then gives the named config's pair, or the VGG mean with std 1.

`describe` walks a config without building it: output size, channels, receptive field and
multiply-accumulates of every layer. Tests and docs/05-network.md use it.

Paper: section 2.1, figure 2; the start of section 3 ("Base network"); section 3.1 (L2Norm on conv4_3);
section 3.4 (SSD512).
Walkthrough: docs/05-network.md.
"""
from __future__ import annotations

import copy
import json
import math
import numbers

MODEL_NAMES = ("ssd300", "ssd512", "small")

# Input normalisation, (pixel - mean) / std per RGB channel, in 0..255 units: the one definition in
# the package (minissd.data.transforms imports it). The paper's networks start from ImageNet VGG16
# weights trained on mean-subtracted, unscaled pixels (Caffe), so they keep std 1 (as converted
# torchvision weights expect). The small model trains from scratch, where inputs of unit variance keep
# the first logits O(1): with std 1 its initial confidence logits reach ~400 and the first SGD step
# diverges.
VGG_MEAN = (123.0, 117.0, 104.0)
IMAGENET_STD = (58.4, 57.1, 57.4)
UNIT_STD = (1.0, 1.0, 1.0)


def conv(name: str, out: int, k: int = 3, s: int = 1, p: int | None = None, d: int = 1) -> dict:
    """A convolution spec (followed by a ReLU); ``p`` defaults to "same" padding for stride 1."""
    if p is None:
        p = d * (k - 1) // 2
    return {"type": "conv", "name": name, "out": int(out), "kernel": int(k), "stride": int(s),
            "padding": int(p), "dilation": int(d)}


def pool(name: str, k: int = 2, s: int | None = None, p: int = 0, ceil: bool = False) -> dict:
    """A max-pooling spec (Caffe's pooling rounds up: ``ceil=True`` reproduces it where it matters)."""
    return {"type": "pool", "name": name, "kernel": int(k), "stride": int(k if s is None else s),
            "padding": int(p), "ceil_mode": bool(ceil)}


def _vgg16_reduced() -> list:
    """VGG16 conv1_1..conv5_3 plus the atrous fc6/fc7 of the authors' Caffe model (pool5 3x3 s1 p1)."""
    layers = []
    widths = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    for stage, (width, n) in enumerate(widths, 1):
        for i in range(1, n + 1):
            layers.append(conv(f"conv{stage}_{i}", width))
        if stage == 3:
            # 75 -> 38 (not 37) on SSD300: Caffe rounds pooled sizes up; the 38x38 conv4_3 map needs it.
            layers.append(pool("pool3", 2, 2, ceil=True))
        elif stage == 5:
            # pool5 keeps the 19x19 resolution (3x3, stride 1, pad 1) instead of halving it.
            layers.append(pool("pool5", 3, 1, 1))
        else:
            layers.append(pool(f"pool{stage}", 2, 2))
    # fc6 as a 3x3 convolution with dilation 6: the subsampled fc6 of VGG16 (paper section 3, "Base network",
    # "atrous" algorithm), which keeps the field of view of the original 7x7 fc6 on the 19x19 map.
    layers.append(conv("fc6", 1024, k=3, d=6))
    layers.append(conv("fc7", 1024, k=1))
    return layers


def _ssd300() -> dict:
    extras = [
        conv("conv8_1", 256, k=1), conv("conv8_2", 512, k=3, s=2, p=1),   # 19 -> 10
        conv("conv9_1", 128, k=1), conv("conv9_2", 256, k=3, s=2, p=1),   # 10 -> 5
        conv("conv10_1", 128, k=1), conv("conv10_2", 256, k=3, p=0),      # 5 -> 3
        conv("conv11_1", 128, k=1), conv("conv11_2", 256, k=3, p=0),      # 3 -> 1
    ]
    return {
        "name": "ssd300",
        "image_size": 300,
        "in_channels": 3,
        "trunk": _vgg16_reduced(),
        "extras": extras,
        "sources": ["conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"],
        "l2norm": {"conv4_3": 20.0},
        "head_kernel": 3,
        "priors": "ssd300",
        "boxes_per_location": [4, 6, 6, 6, 4, 4],
        "variances": [0.1, 0.2],
        "init": {"trunk": "xavier", "extras": "xavier", "heads": "xavier"},
        "input_mean": list(VGG_MEAN),
        "input_std": list(UNIT_STD),
    }


def _ssd512() -> dict:
    # The authors' Caffe SSD512: every extra block halves the map (3x3 s2 p1) and the last one is a
    # 4x4 convolution with padding 1 that takes 2x2 to 1x1: sources 64, 32, 16, 8, 4, 2, 1.
    extras = [
        conv("conv8_1", 256, k=1), conv("conv8_2", 512, k=3, s=2, p=1),   # 32 -> 16
        conv("conv9_1", 128, k=1), conv("conv9_2", 256, k=3, s=2, p=1),   # 16 -> 8
        conv("conv10_1", 128, k=1), conv("conv10_2", 256, k=3, s=2, p=1),  # 8 -> 4
        conv("conv11_1", 128, k=1), conv("conv11_2", 256, k=3, s=2, p=1),  # 4 -> 2
        conv("conv12_1", 128, k=1), conv("conv12_2", 256, k=4, s=1, p=1),  # 2 -> 1
    ]
    return {
        "name": "ssd512",
        "image_size": 512,
        "in_channels": 3,
        "trunk": _vgg16_reduced(),
        "extras": extras,
        "sources": ["conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2", "conv12_2"],
        "l2norm": {"conv4_3": 20.0},
        "head_kernel": 3,
        "priors": "ssd512",
        "boxes_per_location": [4, 6, 6, 6, 6, 4, 4],
        "variances": [0.1, 0.2],
        "init": {"trunk": "xavier", "extras": "xavier", "heads": "xavier"},
        "input_mean": list(VGG_MEAN),
        "input_std": list(UNIT_STD),
    }


def _small() -> dict:
    # One 3x3 conv per stage (16-32-64-128 at 128 px), two 128-wide convs at 8x8, and three stride-2
    # extras to 4x4, 2x2, 1x1. docs/05-network.md explains the choices; issue 7 quotes the measurement
    # (one conv per stage beat two, 128 px beat 96) that set them.
    trunk = [
        conv("conv1", 16), pool("pool1"),        # 128 -> 64
        conv("conv2", 32), pool("pool2"),        # 64 -> 32
        conv("conv3", 64), pool("pool3"),        # 32 -> 16
        conv("conv4", 128), pool("pool4"),       # 16 (source 1) -> 8
        conv("conv5_1", 128), conv("conv5_2", 128),  # 8 (source 2)
    ]
    extras = [
        conv("conv6", 128, k=3, s=2, p=1),       # 8 -> 4
        conv("conv7", 128, k=3, s=2, p=1),       # 4 -> 2
        conv("conv8", 128, k=3, s=2, p=1),       # 2 -> 1
    ]
    return {
        "name": "small",
        "image_size": 128,
        "in_channels": 3,
        "trunk": trunk,
        "extras": extras,
        "sources": ["conv4", "conv5_2", "conv6", "conv7", "conv8"],
        "l2norm": {},
        "head_kernel": 3,
        "priors": "small",
        "boxes_per_location": [4, 6, 6, 4, 4],
        "variances": [0.1, 0.2],
        # He (fan-in) initialisation keeps the activation scale through the ReLU trunk trained from
        # scratch (at init the deepest source is ~25x smaller with Xavier); measured over two seeds it reached a
        # higher mAP after 300 iterations on average (docs/05-network.md). The heads keep Xavier so
        # the first logits and offsets are small.
        "init": {"trunk": "he", "extras": "he", "heads": "xavier"},
        "input_mean": list(VGG_MEAN),
        "input_std": list(IMAGENET_STD),
    }


_BUILDERS = {"ssd300": _ssd300, "ssd512": _ssd512, "small": _small}

#: The named configurations (fresh copies come from `get_config`).
MODEL_CONFIGS = {name: f() for name, f in _BUILDERS.items()}


def get_config(name_or_config) -> dict:
    """A validated deep copy of a named config or of a config dict."""
    if isinstance(name_or_config, str):
        if name_or_config not in MODEL_CONFIGS:
            raise ValueError(f"model name {name_or_config!r} is unknown; choose one of {', '.join(MODEL_NAMES)}")
        config = copy.deepcopy(MODEL_CONFIGS[name_or_config])
    elif isinstance(name_or_config, dict):
        config = copy.deepcopy(name_or_config)
    else:
        raise ValueError(f"model config must be a name or a dict, got {type(name_or_config).__name__}")
    validate_config(config)
    return config


def scale_width(config, factor: float, min_channels: int = 4) -> dict:
    """The same topology with every conv ``factor`` times as wide (for fast float64 checks)."""
    config = get_config(config)
    for part in ("trunk", "extras"):
        for spec in config[part]:
            if spec["type"] == "conv":
                spec["out"] = max(min_channels, int(round(spec["out"] * factor)))
    config["name"] = f"{config['name']}_x{factor:g}"
    validate_config(config)
    return config


_REQUIRED = ("name", "image_size", "in_channels", "trunk", "extras", "sources", "l2norm", "head_kernel",
             "priors", "boxes_per_location", "variances", "init")


def as_rgb(value, name: str, positive: bool = False) -> tuple:
    """``value`` as a tuple of 3 finite floats, or ValueError naming ``name``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
        raise ValueError(f"{name} must be 3 numbers (R, G, B in 0..255 units), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name} must be 3 finite numbers (R, G, B in 0..255 units), got {value!r}")
        if positive and v <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
        out.append(float(v))
    return tuple(out)


def input_normalisation(config, input_mean=None, input_std=None) -> tuple[tuple, tuple]:
    """The ``(mean, std)`` pair (two tuples of 3 floats, 0..255 RGB units) a model of ``config`` uses.

    An explicit ``input_mean``/``input_std`` wins; then the config's own keys; then, for a config dict
    without them (written before they were part of the config), the named config's pair for its
    ``name``, else the Caffe convention (VGG mean, std 1). Raises ValueError naming a bad value.
    """
    if isinstance(config, str):
        config = get_config(config)
    named = MODEL_CONFIGS.get(config.get("name"), {})
    if input_mean is None:
        input_mean = config.get("input_mean", named.get("input_mean", VGG_MEAN))
    if input_std is None:
        input_std = config.get("input_std", named.get("input_std", UNIT_STD))
    return as_rgb(input_mean, "input_mean"), as_rgb(input_std, "input_std", positive=True)


def validate_config(config: dict) -> None:
    """Raise ValueError naming the first problem in a model config."""
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"model config is missing {missing[0]!r}")
    try:
        json.dumps(config)
    except TypeError as err:
        raise ValueError(f"model config is not JSON-serialisable: {err}") from err
    names = []
    for part in ("trunk", "extras"):
        if not isinstance(config[part], list):
            raise ValueError(f"model config {part!r} must be a list of layer specs")
        for spec in config[part]:
            kind = spec.get("type")
            if kind not in ("conv", "pool"):
                raise ValueError(f"layer {spec.get('name')!r}: type must be 'conv' or 'pool', got {kind!r}")
            if not spec.get("name") or "." in spec["name"] or "/" in spec["name"]:
                raise ValueError(f"layer name {spec.get('name')!r} must be non-empty without '.' or '/'")
            for key in ("kernel", "stride") + (("out", "dilation") if kind == "conv" else ()):
                if int(spec[key]) < 1:
                    raise ValueError(f"layer {spec['name']!r}: {key} must be >= 1, got {spec[key]}")
            if int(spec["padding"]) < 0:
                raise ValueError(f"layer {spec['name']!r}: padding must be >= 0, got {spec['padding']}")
            names.append((spec["name"], kind))
    all_names = [n for n, _ in names]
    dup = [n for n in all_names if all_names.count(n) > 1]
    if dup:
        raise ValueError(f"layer name {dup[0]!r} is used twice")
    convs = [n for n, kind in names if kind == "conv"]
    sources = config["sources"]
    if not sources:
        raise ValueError("model config 'sources' is empty")
    for s in sources:
        if s not in convs:
            raise ValueError(f"source {s!r} is not a conv layer of the trunk or extras")
    order = [convs.index(s) for s in sources]
    if order != sorted(order) or len(set(order)) != len(order):
        raise ValueError(f"sources {sources} must be distinct and in network order")
    if all_names[-1] != sources[-1]:
        # Layers after the last source would be computed and never used.
        raise ValueError(f"the last layer ({all_names[-1]!r}) must be the last source ({sources[-1]!r})")
    for s in config["l2norm"]:
        if s not in sources:
            raise ValueError(f"l2norm source {s!r} is not one of the sources {sources}")
    if len(config["boxes_per_location"]) != len(sources):
        raise ValueError(f"boxes_per_location has {len(config['boxes_per_location'])} entries "
                         f"for {len(sources)} sources")
    if int(config["head_kernel"]) % 2 != 1:
        raise ValueError(f"head_kernel must be odd (same-size heads), got {config['head_kernel']}")
    init = config["init"]
    for part in ("trunk", "extras", "heads"):
        if init.get(part) not in ("xavier", "he"):
            raise ValueError(f"init[{part!r}] must be 'xavier' or 'he', got {init.get(part)!r}")
    if "input_mean" in config:
        as_rgb(config["input_mean"], "model config 'input_mean'")
    if "input_std" in config:
        as_rgb(config["input_std"], "model config 'input_std'", positive=True)


def _out_size(size: int, spec: dict) -> int:
    k_eff = spec.get("dilation", 1) * (spec["kernel"] - 1) + 1
    span = size + 2 * spec["padding"] - k_eff
    if spec["type"] == "pool" and spec["ceil_mode"]:
        out = -(-span // spec["stride"]) + 1
        # As in Caffe and PyTorch: the last window must start inside the input or the left padding.
        if (out - 1) * spec["stride"] >= size + spec["padding"]:
            out -= 1
        return out
    return span // spec["stride"] + 1


def describe(config, num_classes: int | None = None) -> list[dict]:
    """Walk the config: one row per layer (and per L2Norm and head when ``num_classes`` is given).

    Each row: ``name``, ``part`` (trunk / extras / l2norm / loc / conf), ``size`` (output H = W), ``channels``,
    ``rf`` (receptive field in input pixels), ``jump`` (input pixels between neighbouring outputs),
    ``macs`` (multiply-accumulates per image) and ``params``.
    Raises ValueError when a layer's output would be empty.
    """
    config = get_config(config)
    size, channels, rf, jump = config["image_size"], config["in_channels"], 1, 1
    rows, at_source = [], {}
    for part in ("trunk", "extras"):
        for spec in config[part]:
            k_eff = spec.get("dilation", 1) * (spec["kernel"] - 1) + 1
            new = _out_size(size, spec)
            if new < 1:
                raise ValueError(f"layer {spec['name']!r} gets a {size}x{size} input and would output nothing")
            rf, jump = rf + (k_eff - 1) * jump, jump * spec["stride"]
            size = new
            macs = params = 0
            if spec["type"] == "conv":
                macs = size * size * spec["out"] * channels * spec["kernel"] ** 2
                params = spec["out"] * (channels * spec["kernel"] ** 2 + 1)
                channels = spec["out"]
            rows.append({"name": spec["name"], "part": part, "size": size, "channels": channels,
                         "rf": rf, "jump": jump, "macs": macs, "params": params})
            at_source[spec["name"]] = rows[-1]
    if num_classes is not None:
        kh = config["head_kernel"]
        for s in config["l2norm"]:
            src = at_source[s]
            rows.append({"name": f"l2norm.{s}", "part": "l2norm", "size": src["size"], "channels": src["channels"],
                         "rf": src["rf"], "jump": src["jump"], "macs": 0, "params": src["channels"]})
        for s, k in zip(config["sources"], config["boxes_per_location"], strict=True):
            src = at_source[s]
            for head, width in (("loc", 4 * k), ("conf", num_classes * k)):
                rows.append({"name": f"{head}.{s}", "part": head, "size": src["size"], "channels": width,
                             "rf": src["rf"] + (kh - 1) * src["jump"], "jump": src["jump"],
                             "macs": src["size"] ** 2 * width * src["channels"] * kh * kh,
                             "params": width * (src["channels"] * kh * kh + 1)})
    return rows


def source_sizes(config) -> list[int]:
    """Spatial size (H = W) of every source map, shallow to deep."""
    config = get_config(config)
    by_name = {r["name"]: r for r in describe(config)}
    return [by_name[s]["size"] for s in config["sources"]]


def source_channels(config) -> list[int]:
    config = get_config(config)
    by_name = {r["name"]: r for r in describe(config)}
    return [by_name[s]["channels"] for s in config["sources"]]

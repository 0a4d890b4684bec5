"""The feature path: VGG16 as SSD uses it (conv1_1..fc7), the extra layers, or the small trunk.

Every part of the feature path is a plain chain of layers, so one builder turns a list of layer
specs (minissd/model/configs.py) into a `Sequential`: each ``conv`` spec becomes a `Conv2d` named
after the spec followed by a `ReLU` named ``<name>_relu``; each ``pool`` spec a `MaxPool2d`.
Parameter names are therefore ``trunk.conv4_3.W``, ``extras.conv8_2.b`` and so on.

SSD's changes to VGG16 (paper section 3, "Base network"): pool5 becomes 3x3 / stride 1 / pad 1
so the map stays 19x19; fc6 and fc7 become convolutions, fc6 a 3x3 kernel with dilation 6 (the
"atrous" subsampling of the 7x7x512x4096 fc6 weights) with 1024 channels, fc7 1x1 with 1024; the
dropout layers and fc8 go. pool3 rounds its output size up (Caffe's pooling), 75 -> 38 at 300 px.

Walkthrough: docs/05-network.md.
"""
from __future__ import annotations

import numpy as np

from ..nn import Conv2d, MaxPool2d, ReLU, Sequential


def relu_name(conv_name: str) -> str:
    return f"{conv_name}_relu"


def build_layers(specs: list, in_channels: int, init: str, rng: np.random.Generator,
                 dtype=np.float32) -> tuple[Sequential, int]:
    """A `Sequential` of conv+ReLU and max-pool layers from ``specs``; returns it and its output channels.

    Parameters
    ----------
    specs : list of dict
        Layer specs as written by `minissd.model.configs.conv` / `pool`.
    in_channels : int
        Channels of the input (3 for the image, or the trunk's output for the extras).
    init : {"xavier", "he"}
        Weight initialisation of the convolutions (biases start at 0).
    rng : numpy.random.Generator
        The source of the initial weights.
    """
    layers = []
    channels = in_channels
    for spec in specs:
        if spec["type"] == "conv":
            layers.append((spec["name"], Conv2d(channels, spec["out"], spec["kernel"], stride=spec["stride"],
                                                padding=spec["padding"], dilation=spec["dilation"], bias=True,
                                                init=init, rng=rng, dtype=dtype)))
            # in place (forward over the conv's output, backward over the incoming gradient): nothing
            # else keeps either, and two fresh activation-sized arrays per step cost page faults
            layers.append((relu_name(spec["name"]), ReLU(inplace=True)))
            channels = spec["out"]
        elif spec["type"] == "pool":
            layers.append((spec["name"], MaxPool2d(spec["kernel"], stride=spec["stride"], padding=spec["padding"],
                                                   ceil_mode=spec["ceil_mode"])))
        else:
            raise ValueError(f"layer {spec.get('name')!r}: unknown type {spec.get('type')!r}")
    return Sequential(layers), channels

"""The pieces of a run, built from its resolved config: model, optimizer, schedule, augmentation."""
from __future__ import annotations

import math

import numpy as np

from ..data import TrainTransform
from ..model import build_model
from ..optim import SGD, WarmupCosine, WarmupMultiStep


def parse_milestones(c: dict, total: int | None = None) -> list:
    """--milestones as numbers: iterations (>= 1), or fractions of the run's length (< 1).

    With ``total`` the fractions are turned into iterations (``round(f * total)``).
    """
    m = c.get("milestones")
    if m is None or m == "" or m == []:
        return []
    if isinstance(m, str):
        try:
            m = [float(v) for v in m.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--milestones must be comma-separated iterations or fractions, got "
                             f"{c['milestones']!r}") from None
    m = [float(v) for v in m]
    if any(not (v > 0 and math.isfinite(v)) or (v > 1 and v != int(v)) for v in m):
        raise ValueError(f"--milestones must be whole iterations or fractions in (0, 1), got {m}")
    if total is not None:
        m = [int(round(v * total)) if v < 1 else int(v) for v in m]
    if m != sorted(m):
        raise ValueError(f"--milestones must be increasing, got {m}")
    return m


def make_schedule(c: dict, total_iters: int):
    """The learning rate by iteration: warmup, then multistep / cosine / constant over ``total_iters``."""
    if c["schedule"] == "cosine":
        return WarmupCosine(c["lr"], c["warmup"], total_iters)
    milestones = parse_milestones(c, total_iters) if c["schedule"] == "multistep" else []
    return WarmupMultiStep(c["lr"], c["warmup"], milestones, c["gamma"])


def decay_start(c: dict, total: int) -> int:
    """The first iteration whose learning rate a time plan must not move any more (the first decay)."""
    if c["schedule"] == "cosine":
        return c["warmup"] + 1
    if c["schedule"] == "multistep":
        m = parse_milestones(c, total)
        if m:
            return m[0]
    return total


def make_train_transform(c: dict, model):
    """--augment: 'ssd' (the paper's), 'flip' or 'none'; the model's input size and normalisation."""
    kwargs = {}
    if c["augment"] in ("flip", "none"):
        kwargs.update(photometric=False, expand=False, crop=False, flip=c["augment"] == "flip")
    if c["crop_min_scale"] is not None:
        kwargs["crop_min_scale"] = c["crop_min_scale"]
    if c["max_expand"] is not None:
        kwargs["expand_ratio"] = c["max_expand"]
    return TrainTransform(model.image_size, mean=model.input_mean, std=model.input_std, **kwargs)


def build_model_for(c: dict, num_object_classes: int, seed: int):
    """The model of --model with background + ``num_object_classes`` outputs, weights from ``seed``."""
    rng = np.random.default_rng([seed, 1])
    return build_model(c["model"], num_object_classes + 1, rng)


def make_optimizer(model, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
    """SGD with momentum and Caffe's parameter groups (biases: lr x2, no weight decay), as SSD trains."""
    return SGD(model, lr=lr, momentum=momentum, weight_decay=weight_decay, groups="caffe")


def total_iterations(c: dict, train_len: int) -> int:
    """--iterations, or --epochs turned into iterations of --batch-size over ``train_len`` images."""
    if c["epochs"] is not None:
        per_epoch = train_len // c["batch_size"]
        if per_epoch < 1:
            raise ValueError(f"--batch-size {c['batch_size']} is larger than the training set ({train_len} images)")
        return max(1, int(math.ceil(c["epochs"] * per_epoch)))
    return int(c["iterations"])

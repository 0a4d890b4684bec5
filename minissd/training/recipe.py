"""The pieces of a run, built from its resolved config: model, optimizer, schedule, augmentation.

Also the named presets of ``--recipe`` (`RECIPES`: the authors' VOC solver, ssd_pascal.py) and the
starting weights of ``--init`` (a VGG16 trunk file) and ``--weights`` (a whole model file).
Walkthrough: docs/16-reproducing-the-paper.md
"""
from __future__ import annotations

import math

import numpy as np

from ..data import TrainTransform
from ..model import build_model
from ..optim import SGD, WarmupCosine, WarmupMultiStep


# The authors' VOC solver and data layer (ssd_pascal.py, their SSD300 VOC07+12 script; the presets use
# it for ssd512 too): batch 32 (batch_size 32 x iter_size 1), base_lr 0.001, momentum 0.9,
# weight_decay 0.0005, lr_policy multistep, stepvalue 80000 100000, gamma 0.1, max_iter 120000, no
# warmup; use_difficult_gt true; Caffe's photometric distortion, crop samplers and random resize.
# The paper's VOC2007-only schedule (section 3.1): 1e-3 for 40k iterations, then 1e-4 and 1e-5 for 10k
# each. What the presets do not fix (matching, mining, scales) is minissd's default, which is the
# paper's. --max-minutes 0: the run is as long as the schedule says, not what fits a time budget.
def _caffe_voc(iterations: int, milestones: str) -> dict:
    return dict(batch_size=32, lr=1e-3, momentum=0.9, weight_decay=5e-4, schedule="multistep",
                milestones=milestones, gamma=0.1, iterations=iterations, warmup=0, max_minutes=0.0,
                augment="ssd", photometric="caffe", crop="caffe", resize="caffe", crop_min_scale=0.3,
                max_expand=4.0, difficult="train", match="bipartite", match_threshold=0.5, neg_pos_ratio=3.0,
                # run logistics of the long run (ssd_pascal.py tests every 10000 iterations)
                eval_every=10000, checkpoint_every=1000)


RECIPES = {
    "caffe-voc07+12": _caffe_voc(120000, "80000,100000"),
    "caffe-voc07": _caffe_voc(60000, "40000,50000"),
}
RECIPE_MODELS = ("ssd300", "ssd512")


def recipe_settings(name) -> dict:
    """The options ``--recipe name`` sets (empty for None); ValueError for an unknown name."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    return dict(RECIPES[name])


def check_recipe(c: dict) -> None:
    """A preset's needs: --model ssd300/ssd512 and VOC training data (ValueError saying so)."""
    name = c.get("recipe")
    if name is None:
        return
    recipe_settings(name)
    if c["model"] not in RECIPE_MODELS:
        raise ValueError(f"--recipe {name} trains the paper's networks: give --model ssd300 or --model ssd512 "
                         f"(got --model {c['model']})")
    if str(c["dataset"]).partition(":")[0] != "voc":
        raise ValueError(f"--recipe {name} is the authors' VOC recipe: give VOC training data, "
                         f"--dataset voc:PATH[:SPLIT] (got --dataset {c['dataset']})")


def describe_recipe(c: dict, given: dict) -> str:
    """One line: the preset's settings as resolved, each one typed on the command line marked."""
    name = c.get("recipe")
    if name is None:
        return ""
    parts = []
    for key in RECIPES[name]:
        value = c[key]
        text = f"{value:g}" if isinstance(value, float) else str(value)
        mark = " (given)" if key in given and given[key] != RECIPES[name][key] else ""
        parts.append(f"{key.replace('_', '-')} {text}{mark}")
    return f"recipe {name}: " + ", ".join(parts)


def train_data_options(c: dict) -> dict:
    """Options for the training dataset: --difficult train keeps VOC's difficult objects (Caffe's
    use_difficult_gt: true); drop (default) leaves them out. ValueError where it cannot apply."""
    mode = c.get("difficult") or "drop"
    if mode not in ("train", "drop"):
        raise ValueError(f"--difficult must be 'train' or 'drop', got {mode!r}")
    kind = str(c["dataset"]).partition(":")[0]
    if mode == "drop" or kind == "shapes":   # shapes has no difficult objects
        return {}
    if kind != "voc":
        raise ValueError(f"--difficult train applies to VOC data (difficult objects); {kind} data has none "
                         "(COCO crowd regions are never trained on)")
    return {"keep_difficult": True}


def load_start_weights(c: dict, model) -> str:
    """--init (a VGG16 trunk file from minissd.convert) or --weights (a whole model file) into ``model``.

    Both are checked against the model (the first mismatch named, with the option). The file's input
    convention becomes the model's (``model.input_mean``/``input_std``) and is recorded in ``c``
    (``input_mean``/``input_std``, written to config.json), so a resumed run rebuilds the same
    normalisation without the file. Returns a one-line description ("" when neither is given). Call it
    before `make_train_transform`, which reads the model's normalisation.
    """
    from ..checkpoint import CheckpointError
    from ..pretrained import load_trunk, load_weights_checked

    init, weights = c.get("init"), c.get("weights")
    if init is None and weights is None:
        return ""
    if init is not None and weights is not None:
        raise ValueError("--init and --weights exclude each other: --init loads a VGG16 trunk only, "
                         "--weights a whole model")
    option, path = ("--init", init) if init is not None else ("--weights", weights)
    if init is not None and c["model"] not in RECIPE_MODELS:
        raise ValueError(f"--init loads a VGG16 trunk, which only --model ssd300 or ssd512 has "
                         f"(got --model {c['model']})")
    try:
        meta = load_trunk(model, path) if init is not None else load_weights_checked(model, path)
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as err:
        raise ValueError(f"{option} {path}: {err}") from None
    c["input_mean"], c["input_std"] = list(model.input_mean), list(model.input_std)
    source = meta.get("converted_from") or meta.get("source")
    what = "VGG16 trunk (extras and heads fresh)" if init is not None else "whole model"
    return (f"weights: {what} from {path}" + (f" (converted from {source})" if source else "")
            + f"; input mean {_fmt3(model.input_mean)}, std {_fmt3(model.input_std)}")


def _fmt3(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


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
    """--augment: 'ssd' (the paper's), 'flip' or 'none'; the model's input size and normalisation.

    --photometric/--crop/--resize pick Caffe's or minissd's variant of a step (None: minissd's, as in
    runs made before the options existed).
    """
    kwargs = {}
    if c["augment"] in ("flip", "none"):
        kwargs.update(photometric=False, expand=False, crop=False, flip=c["augment"] == "flip")
    for key in ("photometric", "crop", "resize"):
        if c.get(key) is not None:
            kwargs[f"{key}_variant"] = c[key]
    if c["crop_min_scale"] is not None:
        kwargs["crop_min_scale"] = c["crop_min_scale"]
    if c["max_expand"] is not None:
        kwargs["expand_ratio"] = c["max_expand"]
    return TrainTransform(model.image_size, mean=model.input_mean, std=model.input_std, **kwargs)


def build_model_for(c: dict, num_object_classes: int, seed: int):
    """The model of --model with background + ``num_object_classes`` outputs, weights from ``seed``."""
    rng = np.random.default_rng([seed, 1])
    # input_mean/input_std: recorded by load_start_weights (--init/--weights), so a resume rebuilds them
    return build_model(c["model"], num_object_classes + 1, rng, input_mean=c.get("input_mean"),
                       input_std=c.get("input_std"))


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

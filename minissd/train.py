"""python -m minissd.train: train an SSD, evaluate it, and leave a run directory behind.

With no arguments it trains the small CPU model on the built-in ``shapes`` dataset and ends by
printing the VOC mAP@0.5 on the held-out test split. ``--help`` explains every option.

The loop is the data flow of docs/ARCHITECTURE.md, one iteration at a time::

    batch -> model.forward -> model.targets (match + encode) -> MultiBoxLoss forward/backward
          -> model.backward -> SGD step

A run directory holds ``config.json`` (every option, resolved), ``metrics.jsonl`` (one JSON
record per logged iteration and per evaluation), ``last.npz`` and ``best.npz`` (the whole
training state: parameters, momentum, iteration, data-loader position, RNG state), and at the
end ``curves.png``, ``detections.png`` and ``results.json``. ``--resume RUN_DIR`` continues from
``last.npz`` exactly: on the CPU, a run interrupted and resumed ends with the same weights, bit
for bit, as one that never stopped (tests/test_train.py checks it).

Walkthrough: docs/07-training.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections import OrderedDict

import numpy as np

from .backend import DeviceError, get_array_module, resolve_device, synchronize, to_cpu, to_device
from .checkpoint import CheckpointError, load_checkpoint
from .loss import MultiBoxLoss, NonFiniteError

# Exit codes: 0 done, 1 error, 2 bad command line (argparse), 3 non-finite loss, 130 Ctrl-C.
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130

STATE_KIND = "minissd-training-state"

# The time plan (--max-minutes): the speed is measured over iterations PLAN_FROM..PLAN_AT of a session
# (the first few are slower: caches, thread pools, page faults).
PLAN_FROM, PLAN_AT = 5, 25
REPLAN_EVERY = 50   # and after each validation, until the first decay

# The defaults of the main job (`python -m minissd.train`), for a 2-core CPU and a 10-minute budget
# (benchmarks/RESULTS.md records the runs). The recipe follows issue 7's reference measurement:
# batch 32, SGD momentum 0.9, lr 0.04 after a 100-iteration linear warmup, held; then x0.1 for the
# last 15% (measured: +0.008 test mAP over holding the rate for the same 60 iterations). The run asks
# for 1600 iterations; --max-minutes measures the speed after 25 iterations and plans the run to
# what fits (schedule included), so a slower machine trains fewer iterations, not longer.
DEFAULTS = OrderedDict(
    dataset="shapes",
    val_dataset=None,       # None: the dataset's own val split (shapes), else no validation
    test_dataset=None,      # None: the dataset's own test split (shapes), else none
    model="small",
    device=None,            # None: $MINISSD_DEVICE, else cpu
    iterations=1600,
    epochs=None,
    batch_size=32,
    lr=0.04,
    warmup=100,
    schedule="multistep",
    milestones="0.85",      # fraction of the (planned) run
    gamma=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    match="bipartite",
    match_threshold=0.5,
    neg_pos_ratio=3.0,
    seed=0,
    out=None,
    eval_every=200,
    val_limit=200,
    test_limit=None,
    train_limit=None,
    checkpoint_every=250,
    log_every=10,
    num_workers=1,
    augment="auto",         # shapes: flip; other data: ssd
    crop_min_scale=None,
    max_expand=None,
    max_minutes=9.5,
    stop_at=None,
    progress="auto",
)

# Options that may change on --resume. All but lr and warmup leave the computation as it was; those
# two are there to rescue a run whose loss diverged (continue from the last good state, more gently).
RESUME_OVERRIDABLE = ("lr", "warmup", "iterations", "epochs", "device", "num_workers", "eval_every", "val_limit",
                      "test_limit", "checkpoint_every", "log_every", "max_minutes", "stop_at",
                      "progress", "test_dataset", "val_dataset")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m minissd.train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train an SSD detector (Liu et al., ECCV 2016) with minissd.\n\n"
            "With no arguments: the small CPU model on the built-in 'shapes' dataset, about 8\n"
            "minutes on 2 CPU cores, ending with the VOC mAP@0.5 on the held-out test split.\n"
            "Everything the run produces goes into its run directory (--out)."),
        epilog=(
            "examples:\n"
            "  python -m minissd.train                                  # the default run\n"
            "  python -m minissd.train --iterations 300 --out runs/quick\n"
            "  python -m minissd.train --dataset voc:data/VOCdevkit/VOC2007:trainval \\\n"
            "      --val-dataset voc:data/VOCdevkit/VOC2007:test --model ssd300 --device cuda \\\n"
            "      --batch-size 32 --lr 1e-3 --iterations 120000 --milestones 80000,100000\n"
            "  python -m minissd.train --resume runs/quick              # continue after Ctrl-C\n\n"
            "exit status: 0 done, 1 error, 2 bad arguments, 3 loss became NaN/inf, 130 interrupted."),
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", metavar="SPEC",
                   help="training data: 'shapes' (built in, generated from a seed), "
                        "'voc:PATH[:SPLIT]' (a VOCdevkit/VOC20xx directory; SPLIT is an ImageSets/Main "
                        "list, default trainval) or 'coco:ANNOTATIONS_JSON:IMAGE_DIR' "
                        f"(default: {d['dataset']})")
    g.add_argument("--val-dataset", metavar="SPEC",
                   help="validation data for the periodic mAP and best.npz, same forms as --dataset, "
                        "or 'none' (default: the val split for shapes; none otherwise)")
    g.add_argument("--test-dataset", metavar="SPEC",
                   help="held-out data evaluated once at the end (the last line printed), or 'none' "
                        "(default: the test split for shapes; none otherwise)")
    g.add_argument("--train-limit", type=int, metavar="N",
                   help="train on the first N images only (for quick checks; default: all)")
    g.add_argument("--val-limit", type=int, metavar="N",
                   help="periodic validation uses the first N images, to keep it cheap; 0 means all "
                        f"(default: {d['val_limit']})")
    g.add_argument("--test-limit", type=int, metavar="N",
                   help="evaluate on the first N test images only (default: all)")
    g.add_argument("--augment", choices=("auto", "ssd", "flip", "none"),
                   help="training augmentation: 'ssd' is the paper's (photometric distortion, zoom-out, "
                        "min-IoU crop, flip), 'flip' only flips, 'none' only resizes; 'auto' is flip for "
                        "shapes (an endless stream of fresh images that already has every scale and "
                        "position; the crop only slows a short run down) and ssd for everything else "
                        f"(default: {d['augment']})")
    g.add_argument("--crop-min-scale", type=float, metavar="S",
                   help="smallest side of a random crop as a fraction of the image (paper 0.1, "
                        "Caffe 0.3; default: the transform's own)")
    g.add_argument("--max-expand", type=float, metavar="X",
                   help="largest zoom-out factor (paper 4; default: the transform's own)")
    g.add_argument("--num-workers", type=int, metavar="N",
                   help="background workers that decode and augment batches; 0 does it in the "
                        f"training loop (default: {d['num_workers']})")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("small", "ssd300", "ssd512"),
                   help="'small' is the 128-px CPU model, 'ssd300'/'ssd512' the paper's VGG16 networks "
                        f"(default: {d['model']})")
    g.add_argument("--device", metavar="DEV",
                   help="'cpu' or 'cuda' (CuPy); default: $MINISSD_DEVICE, else cpu")
    g.add_argument("--match", choices=("bipartite", "best_prior"),
                   help="matching strategy: 'bipartite' (paper: each ground truth's best default box, then "
                        "every box with IoU > threshold) or 'best_prior' (the ssd.pytorch variant that "
                        f"forces the best box even against another ground truth) (default: {d['match']})")
    g.add_argument("--match-threshold", type=float, metavar="T",
                   help=f"IoU above which a default box is a positive (default: {d['match_threshold']})")
    g.add_argument("--neg-pos-ratio", type=float, metavar="R",
                   help=f"hard negatives kept per positive (default: {d['neg_pos_ratio']})")

    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, metavar="N",
                   help=f"SGD steps to train (default: {d['iterations']})")
    g.add_argument("--epochs", type=float, metavar="E",
                   help="train for E passes over the training set instead of --iterations")
    g.add_argument("--batch-size", type=int, metavar="N", help=f"images per step (default: {d['batch_size']})")
    g.add_argument("--lr", type=float, help=f"base learning rate (default: {d['lr']})")
    g.add_argument("--warmup", type=int, metavar="N",
                   help=f"iterations of linear learning-rate warmup (default: {d['warmup']})")
    g.add_argument("--schedule", choices=("multistep", "cosine", "constant"),
                   help="after warmup: 'multistep' multiplies lr by --gamma at each milestone, 'cosine' "
                        "decays it to 0 at the last iteration, 'constant' holds it "
                        f"(default: {d['schedule']})")
    g.add_argument("--milestones", metavar="M1,M2,...",
                   help="where multistep multiplies the lr by --gamma: iterations, or fractions of the run "
                        "(0.9 = at 90%% of the iterations; the paper's VOC schedule is about 0.67,0.83) "
                        f"(default: {d['milestones']})")
    g.add_argument("--gamma", type=float, help=f"multistep decay factor (default: {d['gamma']})")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default: {d['momentum']})")
    g.add_argument("--weight-decay", type=float, metavar="WD",
                   help=f"L2 weight decay (default: {d['weight_decay']}; biases get none)")
    g.add_argument("--seed", type=int,
                   help=f"seeds the weights, the shuffling and the augmentation (default: {d['seed']})")
    g.add_argument("--max-minutes", type=float, metavar="M",
                   help="time budget of this session, final evaluation included: training stops early "
                        "when the time left would not cover the final validation and test passes "
                        "(estimated from the evaluations so far), then the run ends as usual and "
                        f"--resume can continue it; 0 means no limit (default: {d['max_minutes']})")

    g = p.add_argument_group("run directory and logging")
    g.add_argument("--out", metavar="DIR",
                   help="run directory (default: runs/<date>-<time>)")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last.npz, exactly where it stopped; only "
                        "--iterations/--epochs, --device, --num-workers, --max-minutes, --stop-at, the "
                        "evaluation/logging options, and (to rescue a diverged run) --lr and --warmup may "
                        "be given again")
    g.add_argument("--eval-every", type=int, metavar="N",
                   help="evaluate mAP on the validation data every N iterations and at the end; 0 only "
                        f"at the end (default: {d['eval_every']})")
    g.add_argument("--checkpoint-every", type=int, metavar="N",
                   help=f"write last.npz every N iterations (default: {d['checkpoint_every']})")
    g.add_argument("--log-every", type=int, metavar="N",
                   help=f"append a metrics.jsonl record every N iterations (default: {d['log_every']})")
    g.add_argument("--stop-at", type=int, metavar="I",
                   help="stop after iteration I as if interrupted, saving last.npz (to split a run "
                        "across sessions; --resume continues it)")
    g.add_argument("--progress", choices=("auto", "bar", "lines", "none"),
                   help="'bar' is a tqdm progress bar, 'lines' a line every 10 log intervals (for log "
                        "files), 'none' no progress (messages still print), 'auto' picks bar on a terminal "
                        f"(default: {d['progress']})")
    return p


def parse_config(argv=None) -> tuple[dict, dict]:
    """Parse the command line into ``(config, given)``: the resolved options and those typed."""
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    config = dict(DEFAULTS)
    config.update({k: v for k, v in given.items() if k != "resume"})
    return config, given


def _check_config(c: dict) -> None:
    positive = ("batch_size", "log_every")
    for key in positive:
        if c[key] is None or c[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {c[key]}")
    for key in ("iterations", "warmup", "eval_every", "checkpoint_every", "num_workers", "val_limit"):
        if c[key] is not None and c[key] < 0:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 0, got {c[key]}")
    for key in ("train_limit", "test_limit"):
        if c[key] is not None and c[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {c[key]}")
    if c["epochs"] is not None and not c["epochs"] > 0:
        raise ValueError(f"--epochs must be > 0, got {c['epochs']}")
    if not (c["lr"] > 0 and math.isfinite(c["lr"])):
        raise ValueError(f"--lr must be a positive number, got {c['lr']}")
    if not 0 <= c["momentum"] < 1:
        raise ValueError(f"--momentum must be in [0, 1), got {c['momentum']}")
    if c["weight_decay"] < 0:
        raise ValueError(f"--weight-decay must be >= 0, got {c['weight_decay']}")
    if not 0 < c["match_threshold"] < 1:
        raise ValueError(f"--match-threshold must be in (0, 1), got {c['match_threshold']}")
    if c["max_minutes"] is not None and c["max_minutes"] < 0:
        raise ValueError(f"--max-minutes must be >= 0, got {c['max_minutes']}")
    if c["stop_at"] is not None and c["stop_at"] < 1:
        raise ValueError(f"--stop-at must be >= 1, got {c['stop_at']}")
    _milestones(c)


def _milestones(c: dict, total: int | None = None) -> list:
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


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------
DEFAULT_SPLITS = {"train": {"shapes": "train", "voc": "trainval", "coco": "train"},
                  "val": {"shapes": "val", "voc": "val", "coco": "val"},
                  "test": {"shapes": "test", "voc": "test", "coco": "test"}}


def parse_spec(spec: str, role: str = "train") -> tuple[str, str]:
    """``(open_dataset spec, split)`` for a command-line spec used in ``role`` (train, val, test).

    'shapes[:SPLIT]' -> ('shapes', SPLIT or the role's split); 'voc:PATH[:SPLIT]' keeps its SPLIT
    (default: trainval for training, else the role's split); 'coco:ANN:IMAGES' as is (the split
    only decides whether crowd regions are kept).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec must be 'shapes', 'voc:PATH[:SPLIT]' or 'coco:ANN:IMAGES', got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind not in DEFAULT_SPLITS[role]:
        raise ValueError(f"unknown dataset kind {kind!r} in {spec!r}; expected shapes, voc:PATH[:SPLIT] or "
                         "coco:ANNOTATIONS:IMAGES")
    split = DEFAULT_SPLITS[role][kind]
    if kind == "shapes":
        return "shapes", (rest or split)
    return spec, split


def split_spec(spec: str, split: str):
    """The spec of ``split`` of the dataset ``spec`` ('shapes' -> 'shapes:val'), or None if unknown."""
    if spec == "shapes" or spec.startswith("shapes:"):
        return f"shapes:{split}"
    return None


def open_data(spec, limit=None, role="train", option="--dataset"):
    """Open a command-line dataset spec (see `parse_spec`), optionally its first ``limit`` images."""
    from .data import open_dataset

    try:
        name, split = parse_spec(spec, role)
        ds = open_dataset(name, split)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"{option} {spec!r}: {err}") from err
    if limit:
        from .evaluate import Subset

        ds = Subset(ds, range(min(int(limit), len(ds))))
    return ds


def resolve_augment(c: dict) -> None:
    """--augment auto: 'flip' for the built-in shapes stream, the paper's 'ssd' for real data."""
    if c["augment"] == "auto":
        c["augment"] = "flip" if c["dataset"].partition(":")[0] == "shapes" else "ssd"


def resolve_eval_specs(c: dict) -> None:
    """Fill ``val_dataset``/``test_dataset`` from the training spec where the dataset has splits."""
    for key, split in (("val_dataset", "val"), ("test_dataset", "test")):
        if c[key] is None:
            c[key] = split_spec(c["dataset"], split)
        if isinstance(c[key], str) and c[key].lower() == "none":
            c[key] = None


# ----------------------------------------------------------------------------------------------
# State: everything a resume needs, as named arrays plus JSON metadata
# ----------------------------------------------------------------------------------------------
def _flatten(prefix: str, state, arrays: dict):
    """Split a nested state into arrays (stored by path under ``prefix``) and a JSON-able skeleton."""
    if isinstance(state, dict):
        return {str(k): _flatten(f"{prefix}/{k}", v, arrays) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_flatten(f"{prefix}/{i}", v, arrays) for i, v in enumerate(state)]
    if isinstance(state, np.generic):          # NumPy scalars: plain JSON numbers
        return state.item()
    if hasattr(state, "shape") and hasattr(state, "dtype"):   # NumPy or CuPy arrays, 0-d included
        arrays[prefix] = to_cpu(state)
        return {"__array__": prefix}
    return state


def _unflatten(skeleton, arrays: dict):
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__array__"}:
            return arrays[skeleton["__array__"]]
        return {k: _unflatten(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, arrays) for v in skeleton]
    return skeleton


def training_state(model, optimizer, loader, iteration: int, extra: dict) -> tuple[dict, dict]:
    """``(extra_arrays, meta)`` of the training state after ``iteration`` steps, besides the weights.

    The weights go in as `minissd.model.save_model` writes them (so ``load_model`` reads any run
    checkpoint); optimizer and loader arrays go under ``optim/...`` and ``loader/...``, which
    ``load_model`` skips; their non-array parts go into the JSON metadata.
    """
    arrays = OrderedDict()
    meta = dict(extra)
    meta["kind"] = STATE_KIND
    meta["iteration"] = int(iteration)
    meta["optimizer"] = _flatten("optim", optimizer.state_dict(), arrays)
    meta["loader"] = _flatten("loader", loader.state_dict(), arrays)
    return arrays, meta


def model_state_from(arrays: dict) -> dict:
    """The model parameters of a checkpoint's arrays, by dotted name (names without '/')."""
    return OrderedDict((k, v) for k, v in arrays.items() if "/" not in k)


def restore_training_state(arrays, meta, model, optimizer, loader) -> int:
    """Load a training state into model, optimizer and loader; returns the iteration reached."""
    from .model import load_weights

    if meta.get("kind") != STATE_KIND:
        raise CheckpointError("checkpoint is not a minissd training state (no 'kind' marker); "
                              "it cannot be resumed")
    load_weights(model, arrays, "the run's last.npz")
    optimizer.load_state_dict(_to_device_tree(_unflatten(meta["optimizer"], arrays), model))
    loader.load_state_dict(_unflatten(meta["loader"], arrays))
    return int(meta["iteration"])


def _to_device_tree(state, model):
    """Move the arrays of an optimizer state to the device of the model's parameters."""
    first = next(iter(model.state_dict().values()))
    xp = get_array_module(first)
    if xp is np:
        return state
    if isinstance(state, dict):
        return {k: _to_device_tree(v, model) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_device_tree(v, model) for v in state]
    if isinstance(state, np.ndarray):
        return xp.asarray(state)
    return state


# ----------------------------------------------------------------------------------------------
# Building the pieces
# ----------------------------------------------------------------------------------------------
def make_schedule(c: dict, total_iters: int):
    from .optim import WarmupCosine, WarmupMultiStep

    if c["schedule"] == "cosine":
        return WarmupCosine(c["lr"], c["warmup"], total_iters)
    milestones = _milestones(c, total_iters) if c["schedule"] == "multistep" else []
    return WarmupMultiStep(c["lr"], c["warmup"], milestones, c["gamma"])


def make_train_transform(c: dict, model):
    from .data import TrainTransform

    kwargs = {}
    if c["augment"] in ("flip", "none"):
        kwargs.update(photometric=False, expand=False, crop=False, flip=c["augment"] == "flip")
    if c["crop_min_scale"] is not None:
        kwargs["crop_min_scale"] = c["crop_min_scale"]
    if c["max_expand"] is not None:
        kwargs["expand_ratio"] = c["max_expand"]
    return TrainTransform(model.image_size, mean=model.input_mean, std=model.input_std, **kwargs)


# Input normalisation, (pixel - mean) / std per RGB channel, in 0..255 units. The paper's networks
# start from ImageNet VGG16 weights trained on mean-subtracted, unscaled pixels (Caffe), so they keep
# std 1 (as converted torchvision weights expect). The small model trains from scratch, where inputs
# of unit variance keep the first logits O(1): with std 1 its initial confidence logits reach ~400
# and the first SGD step diverges. The pair is stored in every checkpoint ("input_mean"/"input_std").
VGG_MEAN = (123.0, 117.0, 104.0)
IMAGENET_STD = (58.4, 57.1, 57.4)
INPUT_NORMALISATION = {"small": (VGG_MEAN, IMAGENET_STD), "ssd300": (VGG_MEAN, (1.0, 1.0, 1.0)),
                       "ssd512": (VGG_MEAN, (1.0, 1.0, 1.0))}


def set_input_normalisation(model, mean=None, std=None):
    """Attach ``input_mean``/``input_std`` to a model (defaults: its config's entry above)."""
    default = INPUT_NORMALISATION.get(model.config.get("name"), (VGG_MEAN, (1.0, 1.0, 1.0)))
    model.input_mean = tuple(float(v) for v in (mean if mean is not None else default[0]))
    model.input_std = tuple(float(v) for v in (std if std is not None else default[1]))
    return model


def build_model_for(c: dict, num_object_classes: int, seed: int):
    from .model import build_model

    rng = np.random.default_rng([seed, 1])
    return set_input_normalisation(build_model(c["model"], num_object_classes + 1, rng))


def total_iterations(c: dict, train_len: int) -> int:
    if c["epochs"] is not None:
        per_epoch = train_len // c["batch_size"]
        if per_epoch < 1:
            raise ValueError(f"--batch-size {c['batch_size']} is larger than the training set ({train_len} images)")
        return max(1, int(math.ceil(c["epochs"] * per_epoch)))
    return int(c["iterations"])


# ----------------------------------------------------------------------------------------------
# Logging helpers
# ----------------------------------------------------------------------------------------------
class _Progress:
    """A tqdm bar, or plain lines for log files, or nothing."""

    def __init__(self, mode: str, total: int, initial: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, smoothing=0.1,
                            desc="train")

    def update(self, n, postfix: dict | None, line_due: bool, iteration: int, total: int):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.mode == "lines" and line_due and postfix:
            parts = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"iter {iteration}/{total} {parts}", flush=True)

    def set_total(self, total: int):
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def write(self, msg: str, file=None):
        if self.bar is not None:
            self.bar.write(msg, file=file)
        else:   # messages (evaluations, the time plan) print in every mode; "none" only drops progress
            print(msg, file=file or sys.stdout, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Interrupt:
    """First Ctrl-C sets a flag the loop checks between iterations; a second one aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread (e.g. called from a test runner thread)
            self._previous = None
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step, then saving a checkpoint (Ctrl-C again to abort "
              "without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _finite_or_none(value):
    """NaN (AP of a class without ground truth) becomes null, so the files are strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _append_jsonl(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_finite_or_none(record), sort_keys=True) + "\n")


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a crash; the rest is still useful
    return out


def _truncate_metrics(path, iteration):
    """On resume, drop records written after the checkpoint, so the log matches the state."""
    records = _read_jsonl(path)
    keep = [r for r in records if r.get("iteration", 0) <= iteration]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in keep:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(tmp, path)


def format_ap_table(result: dict, class_names, title: str) -> str:
    """A per-class AP table: VOC07 11-point and all-point (area) AP."""
    ap07 = result["ap07"]
    ap_area = result.get("ap_area", {})
    npos = result.get("num_gt", {})
    width = max([len("class"), len("mean")] + [len(n) for n in class_names])
    lines = [title, f"  {'class':<{width}}  {'#gt':>6}  {'AP07':>6}  {'AP(area)':>8}"]
    for i, name in enumerate(class_names):
        label = i + 1
        a07 = ap07.get(label, float("nan"))
        aa = ap_area.get(label, float("nan"))
        lines.append(f"  {name:<{width}}  {npos.get(label, 0):>6}  {a07:>6.3f}  {aa:>8.3f}")
    lines.append(f"  {'mean':<{width}}  {sum(npos.values()) if npos else 0:>6}  "
                 f"{result['map07']:>6.3f}  {result.get('map_area', float('nan')):>8.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def _new_run_dir(c: dict) -> str:
    if c["out"]:
        return c["out"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join("runs", stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join("runs", f"{stamp}-{n}")
    return path


def _json_safe(config):
    return {k: v for k, v in config.items()}


def main(argv=None) -> int:
    try:
        config, given = parse_config(argv)
        resume_dir = given.get("resume")
        if resume_dir:
            config = _resume_config(resume_dir, given)
            run_dir = resume_dir
        else:
            _check_config(config)
            resolve_eval_specs(config)
            resolve_augment(config)
            run_dir = _new_run_dir(config)
            if os.path.exists(os.path.join(run_dir, "last.npz")):
                raise ValueError(f"{run_dir} already holds a run (last.npz); continue it with "
                                 f"--resume {run_dir}, or choose another --out")
        config["device"] = resolve_device(config["device"])
        return Trainer(config, run_dir, resume=bool(resume_dir),
                       length_given="iterations" in given or "epochs" in given).run()
    except (ValueError, DeviceError, CheckpointError, FileNotFoundError) as err:
        print(f"minissd.train: error: {err}", file=sys.stderr)
        return 1


def _resume_config(run_dir: str, given: dict) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"--resume {run_dir}: no config.json there; is it a minissd run directory?")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    for key, value in given.items():
        if key in ("resume", "out"):
            continue
        if key in RESUME_OVERRIDABLE:
            config[key] = value
        elif config.get(key) != value:
            raise ValueError(f"--{key.replace('_', '-')} cannot change on --resume (the run in {run_dir} "
                             f"uses {config.get(key)!r}); start a new run to change it")
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)
    # A --stop-at belongs to the session that gave it; the resumed session runs on unless told again.
    config["stop_at"] = given.get("stop_at")
    if "epochs" in given:
        config["iterations"] = DEFAULTS["iterations"]
    elif "iterations" in given:
        config["epochs"] = None
    for key in ("val_dataset", "test_dataset"):
        if isinstance(config[key], str) and config[key].lower() == "none":
            config[key] = None
    _check_config(config)
    return config


class Trainer:
    """One training run: builds the pieces from a resolved config and runs the loop."""

    def __init__(self, config: dict, run_dir: str, resume: bool = False, length_given: bool = False):
        self.c = config
        self.length_given = length_given   # --iterations/--epochs typed on a resume: they replace a time plan
        self.run_dir = run_dir
        self.resume = resume
        self.device = config["device"]
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.last_path = os.path.join(run_dir, "last.npz")
        self.best_path = os.path.join(run_dir, "best.npz")

    # -- setup -------------------------------------------------------------------------------
    def _setup(self):
        from .data import DataLoader
        from .optim import SGD

        c = self.c
        self.train_ds = open_data(c["dataset"], c["train_limit"], "train", "--dataset")
        self.class_names = list(self.train_ds.class_names)
        self.val_ds = open_data(c["val_dataset"], c["val_limit"] or None, "val", "--val-dataset") \
            if c["val_dataset"] else None
        self.test_ds = open_data(c["test_dataset"], c["test_limit"], "test", "--test-dataset") \
            if c["test_dataset"] else None
        for role, ds in (("--val-dataset", self.val_ds), ("--test-dataset", self.test_ds)):
            if ds is not None and list(ds.class_names) != self.class_names:
                raise ValueError(f"{role} has classes {list(ds.class_names)}, but the training data has "
                                 f"{self.class_names}")
        self.total = total_iterations(c, len(self.train_ds))

        self.model = build_model_for(c, len(self.class_names), c["seed"])
        self.model.to(self.device)
        self.model.train()
        # nothing upstream of the image needs dL/dx: the first convolution skips that GEMM and col2im
        self.model.input_grad = False
        self.optimizer = SGD(self.model, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
                             groups="caffe")   # biases: lr x2, no weight decay
        self.schedule = make_schedule(c, self.total)
        self.loss_fn = MultiBoxLoss(neg_pos_ratio=c["neg_pos_ratio"])  # checks its inputs are finite
        self.transform = make_train_transform(c, self.model)
        if len(self.train_ds) < c["batch_size"]:
            raise ValueError(f"--batch-size {c['batch_size']} is larger than the training set "
                             f"({len(self.train_ds)} images)")
        self.loader = DataLoader(self.train_ds, c["batch_size"], self.transform, shuffle=True,
                                 seed=c["seed"], num_workers=c["num_workers"], drop_last=True)

    def _meta(self) -> dict:
        """What every checkpoint records besides the arrays: enough to rebuild the model."""
        return {
            "train_config": _json_safe(self.c),
            "class_names": self.class_names,
            "input_mean": list(self.model.input_mean),
            "input_std": list(self.model.input_std),
            "planned_iterations": self.total if self.planned_by_time else None,
            "best_map": self.best_map,
            "best_iteration": self.best_iteration,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t_start),
        }

    def save_state(self, path, iteration):
        from .model import save_model

        arrays, meta = training_state(self.model, self.optimizer, self.loader, iteration, self._meta())
        save_model(path, self.model, meta, extra_arrays=arrays)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        c = self.c
        self.t_start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.elapsed_before = 0.0
        self.best_map, self.best_iteration = None, None
        self.planned_by_time = False
        self._setup()
        os.makedirs(self.run_dir, exist_ok=True)
        start = 0
        if self.resume:
            arrays, meta = load_checkpoint(self.last_path)
            start = restore_training_state(arrays, meta, self.model, self.optimizer, self.loader)
            self.best_map, self.best_iteration = meta.get("best_map"), meta.get("best_iteration")
            self.elapsed_before = float(meta.get("elapsed_s", 0.0))
            planned = meta.get("planned_iterations")
            if planned and not self.length_given:
                # the time plan of the first session stands (same length, same schedule)
                self.total, self.planned_by_time = int(planned), True
                self.schedule = make_schedule(self.c, self.total)
            _truncate_metrics(self.metrics_path, start)
            print(f"resuming {self.run_dir} at iteration {start} of {self.total}", flush=True)
        with open(os.path.join(self.run_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(_json_safe(c), f, indent=2, sort_keys=True)
            f.write("\n")
        if not self.resume:
            open(self.metrics_path, "w").close()
            n_params = self.model.num_parameters()
            print(f"run directory: {self.run_dir}\n"
                  f"model {c['model']}: {n_params / 1e6:.2f} M parameters, {len(self.model.priors_cxcywh)} "
                  f"default boxes, {self.model.image_size} px input; {len(self.class_names)} classes "
                  f"({', '.join(self.class_names)})\n"
                  f"data: {c['dataset']} ({len(self.train_ds)} train images), "
                  f"val: {c['val_dataset'] or 'none'}, test: {c['test_dataset'] or 'none'}; "
                  f"{self.total} iterations of batch {c['batch_size']} on {self.device}", flush=True)

        status = self._loop(start)
        if status is not None:
            return status
        return self._finish()

    def _loop(self, start: int):
        c = self.c
        total = self.total
        stop_at = c["stop_at"]
        deadline = (self.t_start + 60.0 * c["max_minutes"]) if c["max_minutes"] else None
        self.timers = OrderedDict((k, 0.0) for k in ("data", "forward", "targets", "loss", "backward",
                                                     "step", "eval", "checkpoint"))
        progress = _Progress(c["progress"], total, start)
        self.progress = progress
        window = {"n": 0, "images": 0, "t": time.perf_counter(), "loss": 0.0, "conf": 0.0, "loc": 0.0}
        self.train_images, self.train_time = 0, 0.0
        self.eval_images, self.eval_time = 0, 0.0
        iteration = start
        last_saved = start
        plan_mark = (start, 0.0)
        replan_due = False
        stream = self.loader.batches()
        sync = (lambda: synchronize()) if self.device == "cuda" else (lambda: None)
        try:
            with _Interrupt() as interrupt:
                while iteration < total:
                    t0 = time.perf_counter()
                    batch = next(stream)
                    t1 = time.perf_counter()
                    x = to_device(batch.images, self.device)
                    lr = float(self.schedule(iteration))
                    self.optimizer.lr = lr
                    self.model.zero_grad()
                    loc, conf = self.model.forward(x)
                    sync()
                    t2 = time.perf_counter()
                    loc_t, labels = self.model.targets(batch.boxes, batch.labels,
                                                       threshold=c["match_threshold"], strategy=c["match"])
                    loc_t = to_device(loc_t, self.device)
                    labels = to_device(labels, self.device)
                    t3 = time.perf_counter()
                    try:
                        parts = self.loss_fn.forward(loc, conf, loc_t, labels)
                        bad = not math.isfinite(parts.total)
                    except NonFiniteError:  # NaN/inf already in the network outputs
                        parts, bad = None, True
                    if bad:
                        progress.close()
                        return self._nonfinite(iteration, batch, parts, last_saved)
                    d_loc, d_conf = self.loss_fn.backward()
                    t4 = time.perf_counter()
                    self.model.backward(d_loc, d_conf)
                    sync()
                    t5 = time.perf_counter()
                    self.optimizer.step()
                    sync()
                    t6 = time.perf_counter()
                    iteration += 1
                    for key, dt in zip(("data", "forward", "targets", "loss", "backward", "step"),
                                       (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
                        self.timers[key] += dt
                    n_img = int(x.shape[0])
                    self.train_images += n_img
                    self.train_time += t6 - t0
                    window["n"] += 1
                    window["images"] += n_img
                    for key in ("loss", "conf", "loc"):
                        window[key] += getattr(parts, "total" if key == "loss" else key)

                    log_due = iteration % c["log_every"] == 0 or iteration == total
                    postfix = None
                    if log_due:
                        now = time.perf_counter()
                        ips = window["images"] / max(now - window["t"], 1e-9)
                        rec = {"iteration": iteration, "lr": lr, "images_per_s": round(ips, 2),
                               "elapsed_s": round(self.elapsed_before + now - self.t_start, 2),
                               # CPU seconds of this process so far: on a shared machine, images per
                               # CPU second says what an idle one would do
                               "cpu_s": round(time.process_time() - self.cpu_start, 2)}
                        for key in ("loss", "conf", "loc"):
                            rec[key] = window[key] / window["n"]
                        rec["num_pos"] = parts.num_pos
                        _append_jsonl(self.metrics_path, rec)
                        postfix = OrderedDict(loss=f"{rec['loss']:.3f}", conf=f"{rec['conf']:.3f}",
                                              loc=f"{rec['loc']:.3f}", lr=f"{lr:.4g}", img_s=f"{ips:.1f}")
                        window = {"n": 0, "images": 0, "t": now, "loss": 0.0, "conf": 0.0, "loc": 0.0}
                    line_due = log_due and (iteration % max(c["log_every"] * 10, 1) == 0 or iteration == total)
                    progress.update(1, postfix, line_due, iteration, total)

                    if c["eval_every"] and iteration % c["eval_every"] == 0 and iteration < total:
                        self._validate(iteration, interrupt)
                        replan_due = True
                        window["t"] = time.perf_counter()  # eval time is not training throughput
                    if c["checkpoint_every"] and iteration % c["checkpoint_every"] == 0:
                        if self._checkpoint(iteration):
                            last_saved = iteration
                        window["t"] = time.perf_counter()
                    if interrupt.requested or (stop_at is not None and iteration >= stop_at):
                        progress.close()
                        self._checkpoint(iteration)
                        if interrupt.requested:
                            print(f"interrupted after iteration {iteration} of {total}; the state is saved in "
                                  f"{self.last_path}.\nresume with: python -m minissd.train --resume "
                                  f"{self.run_dir}", file=sys.stderr, flush=True)
                            return EXIT_INTERRUPTED
                        print(f"stopped after iteration {iteration} of {total} (--stop-at); resume with: "
                              f"python -m minissd.train --resume {self.run_dir}", flush=True)
                        return 0
                    if iteration - start == PLAN_FROM:
                        plan_mark = (iteration, self.train_time)
                    elif deadline is not None and iteration - start == PLAN_AT and not self.planned_by_time:
                        per_iter = (self.train_time - plan_mark[1]) / (iteration - plan_mark[0])
                        total = self._plan(iteration, deadline, per_iter)
                        progress.set_total(total)
                        plan_mark = (iteration, self.train_time)
                    elif (deadline is not None and iteration - start > PLAN_AT and iteration < self._decay_start()
                          and (replan_due or iteration - plan_mark[0] >= REPLAN_EVERY)):
                        # re-plan with the speed since the last plan, until the decay begins: on a shared
                        # machine the speed moves with the neighbours, and a run cut short by the guard
                        # before its decay loses what the decay gives
                        per_iter = (self.train_time - plan_mark[1]) / max(iteration - plan_mark[0], 1)
                        total = self._plan(iteration, deadline, per_iter)
                        progress.set_total(total)
                        plan_mark = (iteration, self.train_time)
                    replan_due = False
                    # The guard: after the plan (it needs the speed), stop when the end would overrun.
                    if (deadline is not None and iteration < total and iteration - start > PLAN_AT
                            and time.perf_counter() + self._final_cost_estimate() > deadline):
                        progress.write(f"--max-minutes {c['max_minutes']}: training stops at iteration "
                                       f"{iteration} of {total} to leave time for the final evaluation "
                                       f"(--resume {self.run_dir} continues it)")
                        total = iteration   # the plan (self.total) stands for a resume
                        break
        except KeyboardInterrupt:
            progress.close()
            print(f"\naborted at iteration {iteration}; the last saved state ({self.last_path}, iteration "
                  f"{last_saved}) is intact. resume with: python -m minissd.train --resume {self.run_dir}",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        finally:
            _close_stream(stream)
        progress.close()
        self.final_iteration = iteration
        self._checkpoint(iteration)
        return None

    def _plan(self, iteration, deadline, per_iter) -> int:
        """Fit the run to the time budget at the measured speed (``per_iter`` seconds a step).

        The planned length is at most the configured one; the schedule is laid out over it
        (fractional milestones, cosine), and the plan is recorded in every checkpoint
        (``planned_iterations``), so a resumed run follows it. Called after PLAN_AT iterations and
        again at each periodic evaluation while the run is still before its decay (on a shared machine
        the speed changes with the neighbours' load).
        """
        c = self.c
        configured = total_iterations(c, len(self.train_ds))
        now = time.perf_counter()
        left = deadline - now - self._final_cost_estimate()
        if self.eval_images:
            per_image_eval = self.eval_time / self.eval_images
        else:   # inference costs about a third of a training step per image
            per_image_eval = per_iter / (3.0 * c["batch_size"])
        eval_per_iter = 0.0
        if c["eval_every"] and self.val_ds is not None:
            eval_per_iter = len(self.val_ds) * per_image_eval / c["eval_every"]
        checkpoint_per_iter = 0.2 / c["checkpoint_every"] if c["checkpoint_every"] else 0.0
        fit = iteration + int(0.97 * max(left, 0.0) / (per_iter + eval_per_iter + checkpoint_per_iter))
        planned = max(min(fit, configured), iteration + 1)
        ips = c["batch_size"] / per_iter
        if planned == self.total:
            return self.total
        quiet = abs(planned - self.total) < 0.03 * self.total and self.planned_by_time
        self.total = planned
        self.planned_by_time = planned < configured or self.planned_by_time
        self.schedule = make_schedule(c, self.total)
        _append_jsonl(self.metrics_path, {"iteration": iteration, "planned_iterations": self.total,
                                          "planned_images_per_s": round(ips, 2)})
        if quiet:
            return self.total
        self.progress.write(f"time plan at iteration {iteration}: {ips:.1f} images/s, {self.total} of {configured} "
                            f"iterations fit in --max-minutes {c['max_minutes']} (evaluation included); "
                            "the schedule is set for that length")
        return self.total

    def _decay_start(self) -> int:
        """The first iteration whose rate the plan must not move any more (the first decay)."""
        c = self.c
        if c["schedule"] == "cosine":
            return c["warmup"] + 1
        if c["schedule"] == "multistep":
            m = _milestones(c, self.total)
            if m:
                return m[0]
        return self.total

    def _final_cost_estimate(self) -> float:
        """Seconds the end of the run will take: final val + test passes, figures, checkpoints."""
        n = 8  # detections.png
        if self.val_ds is not None:
            n += len(self.val_ds)
        if self.test_ds is not None:
            n += len(self.test_ds)
        if self.eval_images:
            rate = self.eval_images / max(self.eval_time, 1e-9)
        else:  # no evaluation yet: inference costs about a third of a training step per image
            rate = 3.0 * self.train_images / max(self.train_time, 1e-9) if self.train_images else 1e9
        return n / max(rate, 1e-9) + 10.0

    def _checkpoint(self, iteration):
        t = time.perf_counter()
        if not self._params_finite():
            # Never replace the last good state with a broken one; the next forward reports it.
            print(f"warning: parameters hold NaN/inf after iteration {iteration}; {self.last_path} "
                  f"is not overwritten", file=sys.stderr, flush=True)
            return False
        self.save_state(self.last_path, iteration)
        self.timers["checkpoint"] += time.perf_counter() - t
        return True

    def _params_finite(self) -> bool:
        for _, p, _ in self.model.named_parameters():
            xp = get_array_module(p)
            if not bool(xp.isfinite(p).all()):
                return False
        return True

    def _nonfinite(self, iteration, batch, parts, last_saved) -> int:
        path = os.path.join(self.run_dir, "nonfinite_batch.json")
        record = {"iteration": iteration + 1, "image_ids": [str(i) for i in batch.ids],
                  "lr": float(self.optimizer.lr)}
        if parts is not None:
            record.update(loss=repr(parts.total), conf=repr(parts.conf), loc=repr(parts.loc),
                          num_pos=parts.num_pos)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        kept = (f"the last good checkpoint is {self.last_path} (iteration {last_saved})"
                if os.path.exists(self.last_path) else "no checkpoint had been written yet")
        print(f"minissd.train: the loss became NaN/inf at iteration {iteration + 1} (lr {self.optimizer.lr:.4g}); "
              f"training stopped and {kept}.\nThe batch's image ids are in {path}.\nTry: a lower learning "
              f"rate or a longer warmup (python -m minissd.train --resume {self.run_dir} --lr "
              f"{self.c['lr'] / 2:g} continues from that checkpoint at half the rate), and check those images' "
              f"boxes (zero-size, inverted or outside the image).", file=sys.stderr, flush=True)
        return EXIT_NONFINITE

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, dataset, split, iteration, should_stop=None, keep_images=0):
        from .evaluate import evaluate_model

        t = time.perf_counter()
        self.model.eval()
        try:
            result = evaluate_model(self.model, dataset, batch_size=self.c["batch_size"], device=self.device,
                                    num_workers=self.c["num_workers"], should_stop=should_stop,
                                    keep_images=keep_images)
        finally:
            self.model.train()
        dt = time.perf_counter() - t
        if result is None:
            return None
        self.eval_images += len(dataset)
        self.eval_time += dt
        rec = {"iteration": iteration, "split": split, "map": result["map07"],
               "map_area": result["map_area"], "eval_s": round(dt, 2),
               "ap": {self.class_names[k - 1]: v for k, v in sorted(result["ap07"].items())}}
        _append_jsonl(self.metrics_path, rec)
        self.timers["eval"] += dt
        return result

    def _validate(self, iteration, interrupt=None):
        if self.val_ds is None:
            return None
        result = self._evaluate(self.val_ds, "val", iteration,
                                should_stop=(lambda: interrupt.requested) if interrupt else None)
        if result is None:
            return None
        m = result["map07"]
        improved = self.best_map is None or m > self.best_map
        if improved:
            self.best_map, self.best_iteration = m, iteration
        self.progress.write(f"iter {iteration}: val mAP@0.5 {m:.3f} (area {result['map_area']:.3f}, "
                            f"{len(self.val_ds)} images){' *best' if improved else ''}")
        if improved:
            t = time.perf_counter()
            self.save_state(self.best_path, iteration)
            self.timers["checkpoint"] += time.perf_counter() - t
        return result

    def _finish(self) -> int:
        from . import viz

        c = self.c
        iteration = self.final_iteration
        val = self._validate(iteration) if self.val_ds is not None else None
        if val is not None:
            # best.npz may already hold this iteration; last.npz must carry the final best_map.
            self._checkpoint(iteration)
        elif not os.path.exists(self.best_path):
            self.save_state(self.best_path, iteration)
        records = _read_jsonl(self.metrics_path)
        try:
            viz.plot_curves(records, os.path.join(self.run_dir, "curves.png"),
                            title=f"minissd {c['model']} on {c['dataset']}")
        except Exception as err:  # a figure must never cost the run its result
            print(f"warning: curves.png not written ({type(err).__name__}: {err})", file=sys.stderr)

        show_ds = self.val_ds if self.val_ds is not None else self.test_ds
        if show_ds is not None:
            try:
                self._detections_png(show_ds)
            except Exception as err:
                print(f"warning: detections.png not written ({type(err).__name__}: {err})", file=sys.stderr)

        test = None
        if self.test_ds is not None:
            test = self._evaluate(self.test_ds, "test", iteration)
        wall = self.elapsed_before + time.perf_counter() - self.t_start
        summary = {
            "iterations": iteration,
            "wall_s": round(wall, 1),
            "train_images_per_s": round(self.train_images / max(self.train_time, 1e-9), 2),
            "cpu_s": round(time.process_time() - self.cpu_start, 1),
            "time_s": {k: round(v, 2) for k, v in self.timers.items()},
            "best_val_map": self.best_map, "best_iteration": self.best_iteration,
        }
        if val is not None:
            summary["val"] = _result_json(val, self.class_names)
        if test is not None:
            summary["test"] = _result_json(test, self.class_names)
        with open(os.path.join(self.run_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(_finite_or_none(summary), f, indent=2, sort_keys=True)
            f.write("\n")

        timing = ", ".join(f"{k} {v:.0f}s" for k, v in self.timers.items() if v >= 0.5)
        print(f"trained {iteration} iterations at {summary['train_images_per_s']:.1f} images/s; "
              f"wall time {wall / 60:.1f} min ({timing})")
        print(f"run directory: {self.run_dir} (config.json, metrics.jsonl, last.npz, best.npz, curves.png, "
              f"detections.png, results.json)")
        if val is not None and test is None:
            print(format_ap_table(val, self.class_names, f"validation ({c['val_dataset']}), "
                                                         f"{len(self.val_ds)} images:"))
        if test is not None:
            print(format_ap_table(test, self.class_names, f"test ({c['test_dataset']}), "
                                                          f"{len(self.test_ds)} images:"))
            print(f"test mAP@0.5: {test['map07']:.3f}", flush=True)
        elif val is not None:
            print(f"val mAP@0.5: {val['map07']:.3f}", flush=True)
        return 0

    def _detections_png(self, dataset, n=8):
        from . import viz
        from .evaluate import Subset, evaluate_model

        sub = Subset(dataset, range(min(n, len(dataset))))
        self.model.eval()
        try:
            result = evaluate_model(self.model, sub, batch_size=n, device=self.device, num_workers=0,
                                    keep_images=n)
        finally:
            self.model.train()
        dets = []
        for d in result["detections"]:
            keep = np.flatnonzero(d["scores"] >= 0.3)[:15]   # best first; 15 keep the picture readable
            dets.append({k: v[keep] for k, v in d.items()})
        viz.detection_grid(os.path.join(self.run_dir, "detections.png"), result["images"], dets,
                           self.class_names, ground_truths=[g["boxes"] for g in result["ground_truths"]],
                           title="detections (score >= 0.3) and ground truth (dashed)")


def _result_json(result, class_names):
    return {
        "map07": result["map07"], "map_area": result["map_area"],
        "ap07": {class_names[k - 1]: v for k, v in sorted(result["ap07"].items())},
        "ap_area": {class_names[k - 1]: v for k, v in sorted(result["ap_area"].items())},
        "num_images": result["num_images"],
    }


def _close_stream(stream):
    try:
        stream.close()
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())

"""python -m minissd.train: train an SSD, evaluate it, and leave a run directory behind.

With no arguments it trains the small CPU model on the built-in ``shapes`` dataset and ends by
printing the VOC mAP@0.5 on the held-out test split. ``--help`` explains every option.

This module is the command: its options (`build_parser`, `DEFAULTS`), their checks and `main`.
The training itself is the library package minissd/training/: `Trainer` runs the loop, and each
iteration is `minissd.training.train_step`::

    batch -> model.targets (match + encode) -> model.forward -> MultiBoxLoss forward/backward
          -> model.backward -> SGD step

Data-parallel: ``mpiexec -n K python -m minissd.train ...`` trains on K processes (the ``mpi`` extra;
``--batch-size`` is the global batch, split across them; rank 0 writes the run directory);
docs/15-data-parallel.md.

A run directory holds ``config.json`` (every option, resolved), ``metrics.jsonl`` (one JSON
record per logged iteration and per evaluation), ``last.npz`` and ``best.npz`` (the whole
training state: parameters, momentum, iteration, data-loader position, RNG state), and at the
end ``curves.png``, ``detections.png`` and ``results.json``. ``--resume RUN_DIR`` continues from
``last.npz`` exactly: on the CPU, a run interrupted and resumed ends with the same weights, bit
for bit, as one that never stopped (tests/test_train.py checks it).

Walkthrough: docs/08-training.md
"""
from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__":
    # Ctrl-C or SIGTERM while the modules below load (numpy and the rest, ~0.4 s): nothing has been
    # written yet, so one line and exit 130 (main() installs the handlers of the run itself).
    def _interrupted_while_starting(signum, frame):
        sys.stderr.write("minissd.train: interrupted while starting; nothing was written\n")
        os._exit(130)

    signal.signal(signal.SIGINT, _interrupted_while_starting)
    signal.signal(signal.SIGTERM, _interrupted_while_starting)

import argparse
import math
import shlex
import time
from collections import OrderedDict

from .backend import DeviceError, resolve_device
from .checkpoint import CheckpointError, load_checkpoint
from .data.specs import split_spec
from .distributed import DistributedError, get_communicator
from .fileio import read_json
from .training import EXIT_INTERRUPTED, EXIT_NONFINITE, Trainer  # noqa: F401  (exit codes: re-exported)
from .training.recipe import RECIPES, check_recipe, describe_recipe, parse_milestones, recipe_settings
from .training.runlog import one_line_warnings, raise_keyboard_interrupt

# Exit codes: 0 done, 1 error, 2 bad command line (argparse), 3 non-finite loss (EXIT_NONFINITE),
# 130 Ctrl-C (EXIT_INTERRUPTED).

# The defaults of the main job (`python -m minissd.train`), for a 2-core CPU and a 10-minute budget
# (benchmarks/RESULTS.md records the runs). The recipe follows issue 7's reference measurement:
# batch 32, SGD momentum 0.9, lr 0.04 after a 100-iteration linear warmup, held; then x0.1 for the
# last 15% (measured: +0.008 test mAP over holding the rate for the same 60 iterations). The run asks
# for 4000 iterations; --max-minutes measures the speed after 25 iterations and plans the run to
# what fits (schedule included), so a slower machine trains fewer iterations, not longer. (More
# iterations keep paying on this data, one pass over its 50000 images being 1563 iterations: test mAP
# 0.905 after 1600, 0.918 after 2200, 0.925 after 3000; benchmarks/RESULTS.md "Issue 17".)
DEFAULTS = OrderedDict(
    dataset="shapes",
    val_dataset=None,       # None: the dataset's own val split (shapes), else no validation
    test_dataset=None,      # None: the dataset's own test split (shapes), else none
    model="small",
    device=None,            # None: $MINISSD_DEVICE, else cpu
    iterations=4000,
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
    photometric=None,       # None: caffe with --augment ssd (the authors' variants); minissd: see --help
    crop=None,
    resize=None,
    difficult="drop",       # VOC difficult objects in training: drop (minissd) or train (Caffe's)
    recipe=None,            # --recipe NAME: a preset of the options above (minissd/training/recipe.py)
    init=None,              # --init: a VGG16 trunk file (python -m minissd.convert)
    weights=None,           # --weights: a whole minissd model file
    max_minutes=9.5,
    stop_at=None,
    progress="auto",
    skip_unreadable=False,
)

# Options that may change on --resume. All but lr and warmup leave the computation as it was; those
# two are there to rescue a run whose loss diverged (continue from the last good state, more gently).
RESUME_OVERRIDABLE = ("lr", "warmup", "iterations", "epochs", "device", "num_workers", "eval_every", "val_limit",
                      "test_limit", "checkpoint_every", "log_every", "max_minutes", "stop_at",
                      "progress", "test_dataset", "val_dataset", "skip_unreadable")


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
            "unreadable images (missing, truncated, corrupt, a mode that cannot be read): by default the\n"
            "  run stops with one line naming the file, after saving its state (last.npz), so --resume\n"
            "  continues from there once the file is fixed (or with --skip-unreadable); with it each one\n"
            "  is reported once and counted (results.json 'unreadable'): training uses the next readable\n"
            "  image in its place, evaluation leaves it out of the mAP.\n"
            "divergence guard: a checkpoint replaces last.npz only when the state is healthy: every\n"
            "  parameter finite, the weight norm at most 2x and the largest |w| at most 4x their values\n"
            "  at the last saved state (or at the start). A loss that turns NaN/inf, or an unhealthy\n"
            "  state at a checkpoint, stops the\n"
            "  run (exit 3) with the command to continue: --resume RUN --lr LOWER from the last healthy\n"
            "  state, or a fresh run with a lower --lr when none was saved yet.\n"
            "Ctrl-C or SIGTERM: finishes the step, saves last.npz and exits 130 (twice: at once).\n\n"
            "exit status: 0 done, 1 error, 2 bad arguments, 3 loss became NaN/inf (diverged), 130 interrupted."),
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
    g.add_argument("--photometric", choices=("caffe", "minissd"),
                   help="--augment ssd's hue shift: 'caffe' is ssd_pascal.py's (hue_delta 18 in OpenCV units of "
                        "2 degrees: +-36 degrees, clamped at hue 0), 'minissd' +-18 degrees wrapping around "
                        "(default: caffe)")
    g.add_argument("--crop", choices=("caffe", "minissd"),
                   help="--augment ssd's crop samplers: 'caffe' tests only the IoU (objects kept by centre, "
                        "a patch may keep none), 'minissd' also needs one object centre in the patch "
                        "(default: caffe)")
    g.add_argument("--resize", choices=("caffe", "minissd"),
                   help="--augment ssd's resize: 'caffe' picks one of 5 interpolations at random per image "
                        "(linear, area, nearest, cubic, lanczos), 'minissd' is bilinear (default: caffe)")
    g.add_argument("--difficult", choices=("train", "drop"),
                   help="VOC objects marked difficult in the training data: 'train' on them as the authors' "
                        "Caffe code does (use_difficult_gt), or 'drop' them; evaluation always ignores them "
                        f"(default: {d['difficult']}; --recipe: train)")
    g.add_argument("--num-workers", type=int, metavar="N",
                   help="background workers that decode and augment batches; 0 does it in the "
                        f"training loop (default: {d['num_workers']})")
    g.add_argument("--skip-unreadable", action="store_true", default=None,
                   help="skip images that cannot be read instead of stopping: each is reported once and "
                        "counted (results.json), training uses the next readable image in its place and "
                        "evaluation leaves it out of the mAP (default: stop with the file's name, state saved)")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("small", "ssd300", "ssd512"),
                   help="'small' is the 128-px CPU model, 'ssd300'/'ssd512' the paper's VGG16 networks "
                        f"(default: {d['model']})")
    g.add_argument("--init", metavar="TRUNK_NPZ",
                   help="start ssd300/ssd512 from a VGG16 trunk file (made by python -m minissd.convert from "
                        "torchvision's ImageNet vgg16 or the reduced-fc VGG16): trunk only, extras and heads "
                        "fresh, as the paper fine-tunes; its input normalisation becomes the model's")
    g.add_argument("--weights", metavar="MODEL_NPZ",
                   help="start from a whole minissd model file (e.g. a converted torchvision ssd300_vgg16), "
                        "checked against --model and the classes")
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
    g.add_argument("--recipe", choices=tuple(RECIPES),
                   help="the authors' VOC recipe (ssd_pascal.py) for --model ssd300/ssd512 on --dataset voc:..: "
                        "batch 32, SGD lr 1e-3, momentum 0.9, weight decay 5e-4, multistep x0.1 at 80k and "
                        "100k of 120k iterations (caffe-voc07: 40k, 50k of 60k), no warmup, no time budget, "
                        "Caffe's augmentation, --difficult train; options typed override it; the settings "
                        "print at start (docs/16-reproducing-the-paper.md)")
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
    config.update(recipe_settings(given.get("recipe")))   # --recipe: its preset; options typed win
    config.update({k: v for k, v in given.items() if k != "resume"})
    return config, given


def _check_config(c: dict) -> None:
    for key in ("lr", "momentum", "weight_decay", "gamma", "match_threshold", "neg_pos_ratio", "epochs",
                "max_minutes", "crop_min_scale", "max_expand"):
        if c.get(key) is not None and not math.isfinite(c[key]):
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {c[key]}"
                             + (" (0 means no limit)" if key == "max_minutes" else ""))
    if c["seed"] is None or not 0 <= c["seed"] < 2 ** 63:
        raise ValueError(f"--seed must be an integer >= 0, got {c['seed']}")
    if c["neg_pos_ratio"] < 0:
        raise ValueError(f"--neg-pos-ratio must be >= 0, got {c['neg_pos_ratio']}")
    if c["gamma"] <= 0:
        raise ValueError(f"--gamma must be > 0, got {c['gamma']}")
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
    parse_milestones(c)


def resolve_augment(c: dict) -> None:
    """--augment auto: 'flip' for the built-in shapes stream, the paper's 'ssd' for real data."""
    if c["augment"] == "auto":
        c["augment"] = "flip" if c["dataset"].partition(":")[0] == "shapes" else "ssd"
    if c["augment"] == "ssd":   # the authors' variants unless told otherwise (docs/16-reproducing-the-paper.md)
        for key in ("photometric", "crop", "resize"):
            if c.get(key) is None:
                c[key] = "caffe"


def resolve_eval_specs(c: dict) -> None:
    """Fill ``val_dataset``/``test_dataset`` from the training spec where the dataset has splits."""
    for key, split in (("val_dataset", "val"), ("test_dataset", "test")):
        if c[key] is None:
            c[key] = split_spec(c["dataset"], split)
        if isinstance(c[key], str) and c[key].lower() == "none":
            c[key] = None


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def _new_run_dir(c: dict) -> str:
    if c["out"]:
        if os.path.exists(c["out"]) and not os.path.isdir(c["out"]):
            raise ValueError(f"--out {c['out']}: is a file, not a directory; choose another --out")
        return c["out"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join("runs", stamp)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join("runs", f"{stamp}-{n}")
    return path


def main(argv=None) -> int:
    """The command: exit status 0 done, 1 error, 2 bad command line, 3 diverged, 130 interrupted."""
    previous = {}
    try:   # Ctrl-C and SIGTERM raise KeyboardInterrupt (the training loop installs its own handlers)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    except (ValueError, AttributeError):   # not the main thread / no SIGTERM
        pass
    try:
        with one_line_warnings():
            return _main(argv)
    except KeyboardInterrupt:   # before the Trainer took over: nothing of the run was written
        print("minissd.train: interrupted before training started; nothing to resume", file=sys.stderr,
              flush=True)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


def fresh_command(given: dict, **changes) -> str:
    """The command line of a new run with the options ``given`` (as typed), ``changes`` applied."""
    options = {k: v for k, v in given.items() if k != "resume"}
    options.update(changes)
    words = ["python", "-m", "minissd.train"]
    for key, value in options.items():
        if value is True:
            words.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            words += [f"--{key.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def _main(argv=None) -> int:
    try:
        config, given = parse_config(argv)
        resume_dir = given.get("resume")
        if resume_dir:
            for key in ("init", "weights"):
                if key in given:
                    raise ValueError(f"--{key} cannot be given with --resume: the weights come from the "
                                     f"checkpoint ({os.path.join(resume_dir, 'last.npz')})")
            config = _resume_config(resume_dir, given)
            run_dir = resume_dir
        else:
            _check_config(config)
            check_recipe(config)
            resolve_eval_specs(config)
            resolve_augment(config)
            if config["recipe"]:
                print(describe_recipe(config, given), flush=True)
            run_dir = _new_run_dir(config)
            if os.path.exists(os.path.join(run_dir, "last.npz")):
                raise ValueError(f"{run_dir} already holds a run (last.npz); continue it with "
                                 f"--resume {run_dir}, or choose another --out")
        config["device"] = resolve_device(config["device"])
        # Under mpiexec: MPI (cpu) or NCCL (cuda, one GPU per local rank), before any array is made.
        comm = get_communicator(config["device"])
        run_dir = comm.bcast(run_dir)   # a time-stamped default may differ by a second between ranks
        if comm.local_size > 1 and not os.environ.get("MINISSD_NUM_THREADS"):
            # K processes on one machine share its cores (as OMP_NUM_THREADS under torchrun)
            from .nn import get_num_threads, set_num_threads
            set_num_threads(max(1, get_num_threads() // comm.local_size))
        with comm.guard():   # a rank that fails ends the whole job, naming itself (never a hang)
            try:
                trainer = Trainer(config, run_dir, resume=bool(resume_dir), comm=comm,
                                  length_given="iterations" in given or "epochs" in given)
                # the divergence advice, when no state was saved yet: this command with a lower --lr
                trainer.fresh_command = lambda **changes: fresh_command(dict(given, out=run_dir), **changes)
                return trainer.run()
            except (ValueError, DeviceError, CheckpointError, FileNotFoundError) as err:
                if comm.size > 1:   # the one-line error, then every rank ends
                    comm.abort(f"minissd.train: error: {err}")
                raise
    except DistributedError as err:
        print(f"minissd.train: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, DeviceError, CheckpointError, FileNotFoundError) as err:
        print(f"minissd.train: error: {err}", file=sys.stderr)
        return 1


def _resume_config(run_dir: str, given: dict) -> dict:
    """The run's config: its config.json; if that is damaged, the copy every checkpoint holds."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"--resume {run_dir}: is a file, not a run directory")
    path = os.path.join(run_dir, "config.json")
    last = os.path.join(run_dir, "last.npz")
    if not os.path.exists(path) and not os.path.exists(last):
        raise ValueError(f"--resume {run_dir}: no config.json there; is it a minissd run directory?")
    try:
        config = read_json(path)
        problem = None if isinstance(config, dict) else f"{path}: not a JSON object"
    except ValueError as err:
        problem = str(err)
    if problem is not None:
        if not os.path.exists(last):
            raise ValueError(f"--resume {run_dir}: {problem}, and there is no last.npz to resume from")
        _, meta = load_checkpoint(last)
        config = meta.get("train_config")
        if not isinstance(config, dict):
            raise ValueError(f"--resume {run_dir}: {problem}, and {last} holds no training config")
        print(f"warning: {problem}; using the training config recorded in {last} (config.json is rewritten)",
              file=sys.stderr, flush=True)
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


if __name__ == "__main__":
    sys.exit(main())

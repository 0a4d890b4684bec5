"""The training run: build the pieces from a resolved config, loop over `train_step`, evaluate, save.

    Trainer(config, run_dir).run()
        _setup     datasets, model, optimizer (Caffe groups), schedule, loss, augmentation, loader
        _loop      batches -> train_step -> log, validate, checkpoint, time plan, Ctrl-C / --stop-at
        _finish    final validation and test, curves.png, detections.png, results.json, the AP table

The run directory's files are described in minissd/train.py; the time plan in budget.py; the
checkpoint layout in state.py.

Data-parallel (``comm`` of K > 1 processes, `minissd.distributed`; docs/15-data-parallel.md): every
rank builds the same model from the same seed (then rank 0's weights are broadcast), draws its shard
of each global batch, and the step sums the gradients (`GradientBucket`); only rank 0 writes the run
directory, logs, evaluates and checkpoints. What steers the loop is agreed: the stop flag
(Ctrl-C/SIGTERM) every iteration, and rank 0's time plan.

An unreadable image (DataError) is agreed on too, since one rank alone meets it: each step, before
the batch is trained on, the ranks all-reduce one integer (the lowest rank whose batch failed, or K);
after rank 0's validation and final evaluation, the same. When any rank failed, every rank raises that
rank's error at the same point, the loader set back to before the batch (a resume draws it again), so
every rank takes the single-process way out: rank 0 saves the state after the last finished iteration
(all ranks hold the same weights) and prints the one line that names the rank and the file and says how
to resume with --skip-unreadable; every rank exits 1. One process pays nothing for this.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections import OrderedDict

import numpy as np

from .. import viz
from ..backend import get_array_module
from ..checkpoint import load_checkpoint
from ..data import DataError, DataLoader, SkipUnreadable, Subset, open_data
from ..distributed import GradientBucket, SingleProcess, broadcast_parameters
from ..fileio import clean_temp_files, write_json_atomic, write_text_atomic
from ..inference import count_objects, evaluate_model
from ..loss import MultiBoxLoss, NonFiniteError
from ..model import save_model
from .budget import TimeBudget
from .recipe import (
    build_model_for,
    decay_start,
    load_start_weights,
    make_optimizer,
    make_schedule,
    make_train_transform,
    total_iterations,
    train_data_options,
)
from .runlog import (
    Interrupt,
    Progress,
    append_jsonl,
    finite_or_none,
    format_ap_table,
    read_jsonl,
    result_json,
    truncate_jsonl,
)
from .state import restore_training_state, training_state
from .step import ALLREDUCE_STAGE, BatchUpload, StageTimer, train_step

# Exit codes: 0 done, 1 error, 2 bad command line (argparse), 3 non-finite loss, 130 Ctrl-C.
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130
EXIT_ERROR = 1

# The divergence guard: a state is healthy -- and may replace last.npz -- when every parameter is
# finite, the weight norm ||w||_2 (all parameters) is at most NORM_GROWTH times, and the largest |w| at
# most MAX_GROWTH times their values at the last saved state (at the start of a session: the initial or
# resumed weights). Measured on the small model (8 shapes images, batch 4, no warmup): ordinary training
# moves both by < 5% over 30 iterations (||w|| 44.45 -> 44.43, max |w| 0.87 -> 0.83); the first step at
# --lr 1e4 multiplies them by 5e4 and 1.3e5, at --lr 2 by 11 and 27, at --lr 0.5 by 2.9 and 6.7, at
# --lr 0.3 by 1.9 and 4.0, and the loss is NaN two or three steps later. A step at --lr 0.2 (1.5x, 2.7x)
# or 0.1 (1.1x, 1.3x) already lands where the loss is 1e3-1e4 times higher, which only the next loss
# shows; such a state passes, and the NaN guard stops the run a step or two later. The gradient norm
# adds nothing at the step it is measured: lr times it is the change of the weights the rule sees.
NORM_GROWTH = 2.0
MAX_GROWTH = 4.0


class Trainer:
    """One training run: builds the pieces from a resolved config and runs the loop.

    ``profile``: time each stage of the step (`StageTimer`; results.json ``time_s``). None (default)
    times them on the CPU, where it is free, and not on a GPU, where a stage's time needs a device
    synchronisation that costs the overlap of host and device work; True synchronises for the
    timers on a GPU too. Without stage timers ``time_s`` holds the steps' total as ``train``.
    """

    def __init__(self, config: dict, run_dir: str, resume: bool = False, length_given: bool = False,
                 profile: bool | None = None, comm=None):
        self.comm = comm if comm is not None else SingleProcess()   # minissd.distributed.Communicator
        self.c = config
        self.length_given = length_given   # --iterations/--epochs typed on a resume: they replace a time plan
        self.run_dir = run_dir
        self.resume = resume
        self.device = config["device"]
        self.profile = (self.device == "cpu") if profile is None else bool(profile)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.last_path = os.path.join(run_dir, "last.npz")
        self.best_path = os.path.join(run_dir, "best.npz")
        # set by the command: fresh_command(lr=...) -> the command line of a new run (divergence advice)
        self.fresh_command = None
        self.pending_eval = None     # iteration whose periodic validation is due and not done yet
        self.unhealthy = None        # why the state at the last checkpoint was not healthy, or None
        self.skipped = {}            # role -> SkipUnreadable (--skip-unreadable)
        self.failed_rank = None      # data-parallel: the rank whose unreadable image stopped the run
        self.phase = "setup"

    # -- setup -------------------------------------------------------------------------------
    def _setup(self):
        c = self.c
        self.train_ds = open_data(c["dataset"], c["train_limit"], "train", "--dataset", **train_data_options(c))
        self.class_names = list(self.train_ds.class_names)
        self.val_ds = open_data(c["val_dataset"], c["val_limit"] or None, "val", "--val-dataset") \
            if c["val_dataset"] else None
        self.test_ds = open_data(c["test_dataset"], c["test_limit"], "test", "--test-dataset") \
            if c["test_dataset"] else None
        for role, ds in (("--val-dataset", self.val_ds), ("--test-dataset", self.test_ds)):
            if ds is not None and list(ds.class_names) != self.class_names:
                raise ValueError(f"{role} has classes {list(ds.class_names)}, but the training data has "
                                 f"{self.class_names}")
        self._check_data()
        if c.get("skip_unreadable"):
            # training: the next readable image takes an unreadable one's place (batches stay full and
            # depend on the files only); evaluation: left out of the mAP (see minissd/data/skip.py)
            self.train_ds = self.skipped["train"] = SkipUnreadable(self.train_ds, log=self._warn)
            if self.val_ds is not None:
                self.val_ds = self.skipped["val"] = SkipUnreadable(self.val_ds, log=self._warn, substitute=False)
            if self.test_ds is not None:
                self.test_ds = self.skipped["test"] = SkipUnreadable(self.test_ds, log=self._warn,
                                                                     substitute=False)
        self.total = total_iterations(c, len(self.train_ds))

        self.model = build_model_for(c, len(self.class_names), c["seed"])
        if not self.resume:   # --init / --weights (a resume takes its weights from last.npz), before the
            start = load_start_weights(c, self.model)   # transform: they set the input normalisation
            if start and self.comm.is_root:
                print(start, flush=True)
        self.model.to(self.device)
        broadcast_parameters(self.model, self.comm)   # replicas start equal whatever the initialiser did
        # data-parallel: sum, not average: the loss already divides by the global batch's N
        self.bucket = GradientBucket(self.model, self.comm, average=False) if self.comm.size > 1 else None
        self.model.train()
        # nothing upstream of the image needs dL/dx: the first convolution skips that GEMM and col2im
        self.model.input_grad = False
        self.optimizer = make_optimizer(self.model, c["lr"], c["momentum"], c["weight_decay"])
        self.schedule = make_schedule(c, self.total)
        self.loss_fn = MultiBoxLoss(neg_pos_ratio=c["neg_pos_ratio"],   # checks its inputs are finite
                                    comm=self.comm if self.comm.size > 1 else None)
        self.transform = make_train_transform(c, self.model)
        if c["batch_size"] % self.comm.size:
            raise ValueError(f"--batch-size {c['batch_size']} (the global batch) is not a multiple of the "
                             f"{self.comm.size} processes: each must get the same number of images")
        if len(self.train_ds) < c["batch_size"]:
            raise ValueError(f"--batch-size {c['batch_size']} is larger than the training set "
                             f"({len(self.train_ds)} images)")
        self.loader = DataLoader(self.train_ds, c["batch_size"], self.transform, shuffle=True,
                                 seed=c["seed"], num_workers=c["num_workers"], drop_last=True,
                                 rank=self.comm.rank, world_size=self.comm.size)
        self.upload = BatchUpload(self.device)

    def _check_data(self):
        """Refuse, before any work, data that is empty or has nothing to learn or score.

        A training set without a single object (after difficult/crowd objects are left out) trains
        to loss 0 and detects nothing: always a mistake (wrong class list, wrong split, every object
        difficult), so it is an error, not a warning that scrolls past. Validation or test data
        without objects has an undefined mAP, so it is refused too.
        """
        c = self.c
        for role, key, ds in (("--dataset", "dataset", self.train_ds), ("--val-dataset", "val_dataset", self.val_ds),
                              ("--test-dataset", "test_dataset", self.test_ds)):
            if ds is None:
                continue
            if len(ds) == 0:
                raise ValueError(f"{role} {c[key]!r}: holds no images (is its image list empty?)")
            n = count_objects(ds)
            if n == 0:
                what = ("nothing to learn from (difficult and crowd objects are left out of training)"
                        if key == "dataset" else "its mAP would be undefined")
                raise ValueError(f"{role} {c[key]!r}: its {len(ds)} images hold no objects; {what}")

    def _warn(self, message: str):
        """One line on stderr (above the progress bar when there is one)."""
        progress = getattr(self, "progress", None)
        if progress is not None:
            progress.write(f"warning: {message}", file=sys.stderr)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _meta(self) -> dict:
        """What every checkpoint records besides the arrays: enough to rebuild the model."""
        return {
            "train_config": dict(self.c),
            "class_names": self.class_names,
            "input_mean": list(self.model.input_mean),
            "input_std": list(self.model.input_std),
            "planned_iterations": self.total if self.planned_by_time else None,
            "best_map": self.best_map,
            "best_iteration": self.best_iteration,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t_start),
            "world_size": self.comm.size,
            # a periodic validation due at this iteration and not done (Ctrl-C, an unreadable image):
            # a resume does it first, so the log and best.npz are those of an uninterrupted run
            "pending_eval": self.pending_eval,
        }

    def save_state(self, path, iteration):
        arrays, meta = training_state(self.model, self.optimizer, self.loader, iteration, self._meta())
        save_model(path, self.model, meta, extra_arrays=arrays)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        """Set up, train, evaluate; returns the exit status.

        On every way out, temporary files of interrupted writes are removed from the run directory
        (also at the start: a kill -9 leaves them). Ctrl-C or SIGTERM outside the training loop
        (setup, the final evaluation and figures) and an unreadable image end the run with one line,
        the state saved where there is one to save.
        """
        try:
            return self._run()
        except KeyboardInterrupt:
            return self._interrupted_outside_loop()
        except DataError as err:   # the final evaluation met an unreadable image (the loop saves its own)
            return self._data_error(err, None)
        finally:
            if self.comm.is_root:
                clean_temp_files(self.run_dir)

    def _run(self) -> int:
        c = self.c
        self.t_start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.elapsed_before = 0.0
        self.best_map, self.best_iteration = None, None
        self.planned_by_time = False
        self._setup()
        root = self.comm.is_root
        if root:
            os.makedirs(self.run_dir, exist_ok=True)
            for path in clean_temp_files(self.run_dir):   # what a kill during a write left
                print(f"removed {path} (left by an interrupted write)", flush=True)
        start = 0
        if self.resume:
            # rank 0 reads the checkpoint; every rank restores model, optimizer and loader from it
            arrays, meta = load_checkpoint(self.last_path) if root else (None, None)
            if self.comm.size > 1:
                arrays, meta = self.comm.bcast((arrays, meta))
            start = restore_training_state(arrays, meta, self.model, self.optimizer, self.loader)
            self.best_map, self.best_iteration = meta.get("best_map"), meta.get("best_iteration")
            self.elapsed_before = float(meta.get("elapsed_s", 0.0))
            planned = meta.get("planned_iterations")
            if planned and not self.length_given:
                # the time plan of the first session stands (same length, same schedule)
                self.total, self.planned_by_time = int(planned), True
                self.schedule = make_schedule(self.c, self.total)
            self.pending_eval = meta.get("pending_eval")
            if root:
                # evaluations at `start` that the state says are not done are redone: drop any trace
                truncate_jsonl(self.metrics_path, start,
                               drop_evaluations=self.pending_eval == start or start >= self.total)
                print(f"resuming {self.run_dir} at iteration {start} of {self.total}", flush=True)
        self._w_ref = self._weight_norm()   # the divergence guard's reference (see NORM_GROWTH)
        self.phase = "train"
        if not root:    # the other ranks train; rank 0 writes, logs, evaluates
            status = self._loop(start)
            if status is not None:     # stopped early: every rank agreed, rank 0 exits without _finish
                return status
            self.phase = "finish"
            self._on_root(self._finish)   # asleep while rank 0 runs the final evaluation
            return 0
        write_json_atomic(os.path.join(self.run_dir, "config.json"), dict(c), sort_keys=True)
        if not self.resume:
            write_text_atomic(self.metrics_path, "")
            n_params = self.model.num_parameters()
            print(f"run directory: {self.run_dir}\n"
                  f"model {c['model']}: {n_params / 1e6:.2f} M parameters, {len(self.model.priors_cxcywh)} "
                  f"default boxes, {self.model.image_size} px input; {len(self.class_names)} classes "
                  f"({', '.join(self.class_names)})\n"
                  f"data: {c['dataset']} ({len(self.train_ds)} train images), "
                  f"val: {c['val_dataset'] or 'none'}, test: {c['test_dataset'] or 'none'}; "
                  f"{self.total} iterations of batch {c['batch_size']} on {self.device}"
                  + (f", data-parallel over {self.comm.size} processes ({c['batch_size'] // self.comm.size} "
                     f"images each, {self.comm.name})" if self.comm.size > 1 else ""), flush=True)

        status = self._loop(start)
        if status is not None:
            return status
        self.phase = "finish"
        return self._on_root(self._finish)

    def _interrupted_outside_loop(self) -> int:
        """Ctrl-C/SIGTERM in setup or in the final evaluation: one line saying what is saved."""
        if getattr(self, "progress", None) is not None:
            self.progress.close()
        resume = f"python -m minissd.train --resume {self.run_dir}"
        if self.phase == "finish":
            msg = (f"interrupted during the final evaluation; the trained state (iteration {self.final_iteration}) "
                   f"is saved in {self.last_path}; {resume} repeats the final evaluation")
        elif os.path.exists(self.last_path):
            msg = f"interrupted; the last saved state ({self.last_path}) is intact; resume with: {resume}"
        else:
            msg = "interrupted before training started; nothing to resume"
        print(f"\nminissd.train: {msg}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED

    def _data_error(self, err, iteration) -> int:
        """An unreadable image (DataError): save the state after ``iteration`` (if given), one line, exit 1."""
        if getattr(self, "progress", None) is not None:
            self.progress.close()
        saved = False
        if iteration is not None:
            saved = self._checkpoint(iteration)
        elif self.phase == "finish":
            iteration, saved = self.final_iteration, os.path.exists(self.last_path)
        if not self.comm.is_root:   # every rank stops here (agreed); rank 0 saved and speaks
            return EXIT_ERROR
        if saved:
            where = "the final evaluation" if self.phase == "finish" else "training"
            launch = f"mpiexec -n {self.comm.size} " if self.comm.size > 1 else ""
            tail = (f"; the state after iteration {iteration} is saved in {self.last_path}: fix the file, or "
                    f"skip unreadable images, and continue {where} with: {launch}python -m minissd.train "
                    f"--resume {self.run_dir} --skip-unreadable")
        else:
            tail = " (use --skip-unreadable to skip and count unreadable images)"
        who = f" (rank {self.failed_rank} of {self.comm.size})" if self.failed_rank is not None else ""
        print(f"minissd.train: error: unreadable image {err}{who}{tail}", file=sys.stderr, flush=True)
        return EXIT_ERROR

    def _agree_on_data_error(self, err):
        """The ranks' shared verdict on work that may have met an unreadable image (a collective).

        ``err``: this rank's DataError, or None. Returns None when no rank failed, else the DataError of
        the lowest failing rank, on every rank (``self.failed_rank`` names it). Costs one integer
        all-reduce when nothing failed, and a broadcast of the error when something did.
        """
        size = self.comm.size
        first = self.comm.allreduce_scalar(self.comm.rank if err is not None else size, "min")
        if first == size:
            return None
        self.failed_rank = first
        return self.comm.bcast(err, root=first)

    def _next_batch(self, stream):
        """This rank's part of the next global batch; with K > 1 ranks, only once every rank has its own.

        A rank alone with an unreadable image must not leave the others in the step's all-reduce: the
        ranks agree first, and when any failed, every rank raises that DataError with its loader set
        back to before this batch, so the state saved now resumes with it.
        """
        if self.comm.size == 1:
            return next(stream)
        before = self.loader.state_dict()
        batch, err = None, None
        try:
            batch = next(stream)
        except DataError as e:
            err = e
        err = self._agree_on_data_error(err)
        if err is not None:
            self.loader.load_state_dict(before)
            raise err
        return batch

    def _on_root(self, work, *args):
        """``work(*args)`` on rank 0 (validation, the final evaluation) while the other ranks sleep.

        Returns its result on rank 0 and None elsewhere. An unreadable image it meets is raised on every
        rank, so that they all stop together.
        """
        if self.comm.size == 1:
            return work(*args)
        result, err = None, None
        if self.comm.is_root:
            try:
                result = work(*args)
            except DataError as e:
                err = e
        self.comm.idle_barrier()
        err = self._agree_on_data_error(err)
        if err is not None:
            raise err
        return result

    def _loop(self, start: int):
        """Train from iteration ``start`` to the plan's end; an exit status, or None to go on to `_finish`."""
        c = self.c
        # (the order of the printed timing line; the step runs them as in `STAGES`)
        stages = ("data", "forward", "targets", "loss", "backward", "step") if self.profile else ("data", "train")
        if self.profile and self.bucket is not None:
            stages = (*stages[:-1], ALLREDUCE_STAGE, stages[-1])
        self.timers = OrderedDict((k, 0.0) for k in (*stages, "eval", "checkpoint"))
        timer = StageTimer(self.timers, sync=self.device != "cpu") if self.profile else None
        self.progress = Progress(c["progress"] if self.comm.is_root else "none", self.total, start)
        self.budget = TimeBudget(c["max_minutes"], self.t_start, batch_size=c["batch_size"],
                                 eval_every=c["eval_every"], checkpoint_every=c["checkpoint_every"],
                                 val_images=len(self.val_ds) if self.val_ds is not None else 0,
                                 final_images=sum(len(d) for d in (self.val_ds, self.test_ds) if d is not None),
                                 start=start)
        self._window = self._new_window(time.perf_counter())
        self.end = self.total    # where this session stops (the guard may end it before the plan)
        iteration = self.last_saved = start
        stream = self.loader.batches()
        try:
            with Interrupt() as interrupt:
                if self.pending_eval == start and start < self.end:   # cut by the last session: redo it first
                    status = self._redo_pending_eval(start, interrupt)
                    if status is not None:
                        return status
                while iteration < self.end:
                    t0 = time.perf_counter()
                    if timer is not None:
                        timer.start()
                    batch = self._next_batch(stream)
                    t1 = time.perf_counter()
                    lr = float(self.schedule(iteration))
                    self.optimizer.lr = lr
                    try:
                        parts = train_step(self.model, self.loss_fn, self.optimizer, batch,
                                           threshold=c["match_threshold"], strategy=c["match"],
                                           upload=self.upload, timer=timer, bucket=self.bucket)
                    except NonFiniteError:  # NaN/inf already in the network outputs
                        parts = None
                    if parts is None or not math.isfinite(parts.total):
                        self.progress.close()
                        return self._nonfinite(iteration, batch, parts)
                    t2 = time.perf_counter()
                    if timer is None:
                        self.timers["data"] += t1 - t0
                        self.timers["train"] += t2 - t1
                    iteration += 1
                    n_images = len(batch.ids) * self.comm.size   # the global batch
                    self.budget.add_train(n_images, t2 - t0)
                    self._log(iteration, lr, parts, n_images)
                    status = self._between_steps(iteration, interrupt)
                    if status is not None:
                        return status
        except KeyboardInterrupt:
            self.progress.close()
            print(f"\naborted at iteration {iteration}; the last saved state ({self.last_path}, iteration "
                  f"{self.last_saved}) is intact. resume with: python -m minissd.train --resume {self.run_dir}",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except DataError as err:   # an unreadable image (training batch or validation): save, then stop
            return self._data_error(err, iteration)
        finally:
            _close_stream(stream)
        self.progress.close()
        self.final_iteration = iteration
        if not self._checkpoint(iteration, warn=False) and self.unhealthy:
            return self._diverged(iteration)
        return None

    def _redo_pending_eval(self, iteration, interrupt):
        """The periodic validation at ``iteration`` that the last session did not finish, done now."""
        if self.comm.is_root:
            self.progress.write(f"iter {iteration}: the validation the last session did not finish, done now")
        self._on_root(self._validate, iteration, interrupt)
        if not self.comm.is_root or self.pending_eval is None:
            self.pending_eval = None
            return None
        self.progress.close()   # interrupted again: the saved state still says it is pending
        print(f"interrupted during the validation at iteration {iteration}; {self.last_path} is unchanged. "
              f"resume with: python -m minissd.train --resume {self.run_dir}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED

    @staticmethod
    def _new_window(t):
        return {"n": 0, "images": 0, "t": t, "loss": 0.0, "conf": 0.0, "loc": 0.0}

    def _log(self, iteration, lr, parts, n_img):
        """Add a step to the running means; every --log-every steps a metrics.jsonl record and the progress."""
        if not self.comm.is_root:
            return
        c, window = self.c, self._window
        window["n"] += 1
        window["images"] += n_img
        for key in ("loss", "conf", "loc"):
            window[key] += getattr(parts, "total" if key == "loss" else key)
        log_due = iteration % c["log_every"] == 0 or iteration == self.end
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
            append_jsonl(self.metrics_path, rec)
            postfix = OrderedDict(loss=f"{rec['loss']:.3f}", conf=f"{rec['conf']:.3f}",
                                  loc=f"{rec['loc']:.3f}", lr=f"{lr:.4g}", img_s=f"{ips:.1f}")
            self._window = self._new_window(now)
        line_due = log_due and (iteration % max(c["log_every"] * 10, 1) == 0 or iteration == self.end)
        self.progress.update(1, postfix, line_due, iteration, self.end)

    def _between_steps(self, iteration, interrupt):
        """Validation, checkpoint, Ctrl-C / --stop-at, the time plan and its guard, after ``iteration``.

        Returns an exit status when the run must end now, else None (the guard only moves ``self.end``).
        """
        c = self.c
        evaluated = False
        if c["eval_every"] and iteration % c["eval_every"] == 0 and iteration < self.end:
            self._on_root(self._validate, iteration, interrupt)   # the other ranks sleep meanwhile
            evaluated = True
            self._window["t"] = time.perf_counter()  # eval time is not training throughput
        if c["checkpoint_every"] and iteration % c["checkpoint_every"] == 0:
            if self._checkpoint(iteration, warn=False):
                self.last_saved = iteration
            elif self.unhealthy:   # diverging: stop while last.npz still holds a healthy state
                self.progress.close()
                return self._diverged(iteration)
            self._window["t"] = time.perf_counter()
        requested = interrupt.requested
        if self.comm.size > 1:    # a signal seen by any rank stops them all after the same step
            requested = bool(self.comm.allreduce_scalar(int(requested), "max"))
        if requested or (c["stop_at"] is not None and iteration >= c["stop_at"]):
            self.progress.close()
            self._checkpoint(iteration)
            if not self.comm.is_root:
                return EXIT_INTERRUPTED if requested else 0
            if requested:
                print(f"interrupted after iteration {iteration} of {self.end}; the state is saved in "
                      f"{self.last_path}.\nresume with: python -m minissd.train --resume "
                      f"{self.run_dir}", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
            print(f"stopped after iteration {iteration} of {self.end} (--stop-at); resume with: "
                  f"python -m minissd.train --resume {self.run_dir}", flush=True)
            return 0
        if not self.comm.is_root:
            self._follow_plan()
            return None
        per_iter = self.budget.plan_due(iteration, self.planned_by_time, lambda: decay_start(c, self.total),
                                        evaluated)
        if per_iter is not None:
            self.end = self._plan(iteration, per_iter)
            self.progress.set_total(self.end)
        # The guard: after the plan (it needs the speed), stop when the end would overrun.
        if self.budget.overruns(iteration, self.end):
            self.progress.write(f"--max-minutes {c['max_minutes']}: training stops at iteration "
                                f"{iteration} of {self.end} to leave time for the final evaluation "
                                f"(--resume {self.run_dir} continues it)")
            self.end = iteration   # the plan (self.total) stands for a resume
        if self.comm.size > 1:
            self.comm.bcast((self.end, self.total, self.planned_by_time))
        return None

    def _follow_plan(self):
        """Ranks other than 0: take rank 0's time plan (it alone knows the evaluation's cost)."""
        end, total, planned = self.comm.bcast(None)
        if total != self.total:
            self.schedule = make_schedule(self.c, total)
        self.end, self.total, self.planned_by_time = end, total, planned

    def _plan(self, iteration, per_iter) -> int:
        """Fit the run to the time budget at the measured speed (``per_iter`` seconds a step).

        The planned length is at most the configured one; the schedule is laid out over it
        (fractional milestones, cosine), and the plan is recorded in every checkpoint
        (``planned_iterations``), so a resumed run follows it.
        """
        c = self.c
        configured = total_iterations(c, len(self.train_ds))
        planned = self.budget.fit(iteration, per_iter, configured)
        ips = c["batch_size"] / per_iter
        if planned == self.total:
            return self.total
        quiet = abs(planned - self.total) < 0.03 * self.total and self.planned_by_time
        self.total = planned
        self.planned_by_time = planned < configured or self.planned_by_time
        self.schedule = make_schedule(c, self.total)
        append_jsonl(self.metrics_path, {"iteration": iteration, "planned_iterations": self.total,
                                         "planned_images_per_s": round(ips, 2)})
        if quiet:
            return self.total
        self.progress.write(f"time plan at iteration {iteration}: {ips:.1f} images/s, {self.total} of {configured} "
                            f"iterations fit in --max-minutes {c['max_minutes']} (evaluation included); "
                            "the schedule is set for that length")
        return self.total

    def _checkpoint(self, iteration, warn=True):
        """Write last.npz if the state is healthy (see NORM_GROWTH); False (and ``self.unhealthy``
        says why, in a warning unless ``warn`` is False) when it is not, so last.npz keeps the last
        healthy state."""
        t = time.perf_counter()
        norm, self.unhealthy = self._health(iteration)   # every rank: the same weights, the same verdict
        if self.unhealthy is not None:
            if warn and self.comm.is_root:
                self._warn(f"{self.last_path} is not overwritten after iteration {iteration}: {self.unhealthy}")
            return False
        self._w_ref = norm
        if not self.comm.is_root:
            return True
        self.save_state(self.last_path, iteration)
        self.timers["checkpoint"] += time.perf_counter() - t
        return True

    def _weight_norm(self) -> tuple[float, float]:
        """(||w||_2, max |w|) over every parameter, in float64 (NaN or inf when one is not finite)."""
        total, largest = 0.0, 0.0
        for _, p, _ in self.model.named_parameters():
            xp = get_array_module(p)
            total += float(xp.sum(xp.square(p, dtype=xp.float64)))
            largest = max(largest, float(xp.abs(p).max())) if p.size else largest
        return math.sqrt(total), largest

    def _health(self, iteration):
        """``(norms, None)`` for a healthy state, else ``(norms, why not)`` (the rule: NORM_GROWTH, MAX_GROWTH)."""
        norms = self._weight_norm()
        if not all(math.isfinite(v) for v in norms):
            return norms, "parameters hold NaN/inf"
        for what, value, ref, limit in (("weight norm", norms[0], self._w_ref[0], NORM_GROWTH),
                                        ("largest |w|", norms[1], self._w_ref[1], MAX_GROWTH)):
            ref = max(ref, 1e-3)
            if value > limit * ref:
                return norms, (f"the {what} grew {value / ref:.3g}x since the last saved state (healthy: at "
                               f"most {limit:g}x; {value:.4g} after iteration {iteration} against {ref:.4g})")
        return norms, None

    def _advice(self) -> str:
        """A command that works in the present state: resume the last healthy state, or start again."""
        lr = self.c["lr"] / 10
        if os.path.exists(self.last_path):
            return (f"python -m minissd.train --resume {self.run_dir} --lr {lr:g} continues from that "
                    f"checkpoint at a tenth of the rate")
        if self.fresh_command is not None:
            return f"{self.fresh_command(lr=lr)} starts the run again at a tenth of the rate"
        return f"start the run again with --lr {lr:g} (a tenth of the rate)"

    def _kept(self) -> str:
        if os.path.exists(self.last_path):
            return f"the last healthy checkpoint is {self.last_path} (iteration {self.last_saved})"
        return "no checkpoint had been written yet"

    def _diverged(self, iteration) -> int:
        """The state at a checkpoint is not healthy: stop (exit 3) with a command that works."""
        if self.comm.is_root:
            print(f"minissd.train: training diverged by iteration {iteration} (lr {self.optimizer.lr:.4g}): "
                  f"{self.unhealthy}; training stopped and {self._kept()}.\nTry a lower learning rate or a "
                  f"longer warmup: {self._advice()}.", file=sys.stderr, flush=True)
        return EXIT_NONFINITE

    def _nonfinite(self, iteration, batch, parts) -> int:
        if not self.comm.is_root:   # the loss is global: every rank stops at the same step
            return EXIT_NONFINITE
        path = os.path.join(self.run_dir, "nonfinite_batch.json")
        record = {"iteration": iteration + 1, "image_ids": [str(i) for i in batch.ids],
                  "lr": float(self.optimizer.lr)}
        if parts is not None:
            record.update(loss=repr(parts.total), conf=repr(parts.conf), loc=repr(parts.loc),
                          num_pos=parts.num_pos)
        write_json_atomic(path, record)
        print(f"minissd.train: the loss became NaN/inf at iteration {iteration + 1} (lr {self.optimizer.lr:.4g}); "
              f"training stopped and {self._kept()}.\nThe batch's image ids are in {path}.\nTry a lower "
              f"learning rate or a longer warmup: {self._advice()}; and check those images' boxes "
              f"(zero-size, inverted or outside the image).", file=sys.stderr, flush=True)
        return EXIT_NONFINITE

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(self, dataset, split, iteration, should_stop=None, keep_images=0):
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
        self.budget.add_eval(len(dataset), dt)
        rec = {"iteration": iteration, "split": split, "map": result["map07"],
               "map_area": result["map_area"], "eval_s": round(dt, 2),
               "ap": {self.class_names[k - 1]: v for k, v in sorted(result["ap07"].items())}}
        append_jsonl(self.metrics_path, rec)
        self.timers["eval"] += dt
        return result

    def _validate(self, iteration, interrupt=None):
        if self.val_ds is None:
            return None
        self.pending_eval = iteration   # saved with the state until the evaluation is done
        result = self._evaluate(self.val_ds, "val", iteration,
                                should_stop=(lambda: interrupt.requested) if interrupt else None)
        if result is None:
            return None
        self.pending_eval = None
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
        c = self.c
        iteration = self.final_iteration
        val = self._validate(iteration) if self.val_ds is not None else None
        if val is not None:
            # best.npz may already hold this iteration; last.npz must carry the final best_map.
            self._checkpoint(iteration)
        elif not os.path.exists(self.best_path):
            self.save_state(self.best_path, iteration)
        records = read_jsonl(self.metrics_path)
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
        budget = self.budget
        summary = {
            "iterations": iteration,
            "wall_s": round(wall, 1),
            "train_images_per_s": round(budget.train_images / max(budget.train_time, 1e-9), 2),
            "cpu_s": round(time.process_time() - self.cpu_start, 1),
            "time_s": {k: round(v, 2) for k, v in self.timers.items()},
            "best_val_map": self.best_map, "best_iteration": self.best_iteration,
        }
        if val is not None:
            summary["val"] = result_json(val, self.class_names)
        if test is not None:
            summary["test"] = result_json(test, self.class_names)
        if self.skipped:   # --skip-unreadable: what was skipped (this session), per role
            summary["unreadable"] = {role: ds.summary() for role, ds in self.skipped.items()}
        write_json_atomic(os.path.join(self.run_dir, "results.json"), finite_or_none(summary), sort_keys=True)

        timing = ", ".join(f"{k} {v:.0f}s" for k, v in self.timers.items() if v >= 0.5)
        print(f"trained {iteration} iterations at {summary['train_images_per_s']:.1f} images/s; "
              f"wall time {format_duration(wall)}" + (f" ({timing})" if timing else ""))
        for role, ds in self.skipped.items():
            n = len(ds.skipped)
            if n:
                print(f"unreadable images skipped ({role}): {n}; listed in results.json ('unreadable')")
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


def format_duration(seconds: float) -> str:
    """'42.3 s' under a minute, '7.5 min' under an hour, else '2.25 h'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _close_stream(stream):
    try:
        stream.close()
    except Exception:
        pass

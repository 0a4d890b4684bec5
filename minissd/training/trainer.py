"""The training run: build the pieces from a resolved config, loop over `train_step`, evaluate, save.

    Trainer(config, run_dir).run()
        _setup     datasets, model, optimizer (Caffe groups), schedule, loss, augmentation, loader
        _loop      batches -> train_step -> log, validate, checkpoint, time plan, Ctrl-C / --stop-at
        _finish    final validation and test, curves.png, detections.png, results.json, the AP table

The run directory's files are described in minissd/train.py; the time plan in budget.py; the
checkpoint layout in state.py.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import OrderedDict

import numpy as np

from .. import viz
from ..backend import get_array_module
from ..checkpoint import load_checkpoint
from ..data import DataLoader, Subset, open_data
from ..inference import evaluate_model
from ..loss import MultiBoxLoss, NonFiniteError
from ..model import save_model
from .budget import TimeBudget
from .recipe import (
    build_model_for,
    decay_start,
    make_optimizer,
    make_schedule,
    make_train_transform,
    total_iterations,
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
from .step import BatchUpload, StageTimer, train_step

# Exit codes: 0 done, 1 error, 2 bad command line (argparse), 3 non-finite loss, 130 Ctrl-C.
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130


class Trainer:
    """One training run: builds the pieces from a resolved config and runs the loop.

    ``profile``: time each stage of the step (`StageTimer`; results.json ``time_s``). None (default)
    times them on the CPU, where it is free, and not on a GPU, where a stage's time needs a device
    synchronisation that costs the overlap of host and device work; True synchronises for the
    timers on a GPU too. Without stage timers ``time_s`` holds the steps' total as ``train``.
    """

    def __init__(self, config: dict, run_dir: str, resume: bool = False, length_given: bool = False,
                 profile: bool | None = None):
        self.c = config
        self.length_given = length_given   # --iterations/--epochs typed on a resume: they replace a time plan
        self.run_dir = run_dir
        self.resume = resume
        self.device = config["device"]
        self.profile = (self.device == "cpu") if profile is None else bool(profile)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.last_path = os.path.join(run_dir, "last.npz")
        self.best_path = os.path.join(run_dir, "best.npz")

    # -- setup -------------------------------------------------------------------------------
    def _setup(self):
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
        self.optimizer = make_optimizer(self.model, c["lr"], c["momentum"], c["weight_decay"])
        self.schedule = make_schedule(c, self.total)
        self.loss_fn = MultiBoxLoss(neg_pos_ratio=c["neg_pos_ratio"])  # checks its inputs are finite
        self.transform = make_train_transform(c, self.model)
        if len(self.train_ds) < c["batch_size"]:
            raise ValueError(f"--batch-size {c['batch_size']} is larger than the training set "
                             f"({len(self.train_ds)} images)")
        self.loader = DataLoader(self.train_ds, c["batch_size"], self.transform, shuffle=True,
                                 seed=c["seed"], num_workers=c["num_workers"], drop_last=True)
        self.upload = BatchUpload(self.device)

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
        }

    def save_state(self, path, iteration):
        arrays, meta = training_state(self.model, self.optimizer, self.loader, iteration, self._meta())
        save_model(path, self.model, meta, extra_arrays=arrays)

    # -- the run -------------------------------------------------------------------------------
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
            truncate_jsonl(self.metrics_path, start)
            print(f"resuming {self.run_dir} at iteration {start} of {self.total}", flush=True)
        with open(os.path.join(self.run_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(dict(c), f, indent=2, sort_keys=True)
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
        """Train from iteration ``start`` to the plan's end; an exit status, or None to go on to `_finish`."""
        c = self.c
        # (the order of the printed timing line; the step runs them as in `STAGES`)
        stages = ("data", "forward", "targets", "loss", "backward", "step") if self.profile else ("data", "train")
        self.timers = OrderedDict((k, 0.0) for k in (*stages, "eval", "checkpoint"))
        timer = StageTimer(self.timers, sync=self.device != "cpu") if self.profile else None
        self.progress = Progress(c["progress"], self.total, start)
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
                while iteration < self.end:
                    t0 = time.perf_counter()
                    if timer is not None:
                        timer.start()
                    batch = next(stream)
                    t1 = time.perf_counter()
                    lr = float(self.schedule(iteration))
                    self.optimizer.lr = lr
                    try:
                        parts = train_step(self.model, self.loss_fn, self.optimizer, batch,
                                           threshold=c["match_threshold"], strategy=c["match"],
                                           upload=self.upload, timer=timer)
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
                    self.budget.add_train(len(batch.ids), t2 - t0)
                    self._log(iteration, lr, parts, len(batch.ids))
                    status = self._between_steps(iteration, interrupt)
                    if status is not None:
                        return status
        except KeyboardInterrupt:
            self.progress.close()
            print(f"\naborted at iteration {iteration}; the last saved state ({self.last_path}, iteration "
                  f"{self.last_saved}) is intact. resume with: python -m minissd.train --resume {self.run_dir}",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        finally:
            _close_stream(stream)
        self.progress.close()
        self.final_iteration = iteration
        self._checkpoint(iteration)
        return None

    @staticmethod
    def _new_window(t):
        return {"n": 0, "images": 0, "t": t, "loss": 0.0, "conf": 0.0, "loc": 0.0}

    def _log(self, iteration, lr, parts, n_img):
        """Add a step to the running means; every --log-every steps a metrics.jsonl record and the progress."""
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
            self._validate(iteration, interrupt)
            evaluated = True
            self._window["t"] = time.perf_counter()  # eval time is not training throughput
        if c["checkpoint_every"] and iteration % c["checkpoint_every"] == 0:
            if self._checkpoint(iteration):
                self.last_saved = iteration
            self._window["t"] = time.perf_counter()
        if interrupt.requested or (c["stop_at"] is not None and iteration >= c["stop_at"]):
            self.progress.close()
            self._checkpoint(iteration)
            if interrupt.requested:
                print(f"interrupted after iteration {iteration} of {self.end}; the state is saved in "
                      f"{self.last_path}.\nresume with: python -m minissd.train --resume "
                      f"{self.run_dir}", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
            print(f"stopped after iteration {iteration} of {self.end} (--stop-at); resume with: "
                  f"python -m minissd.train --resume {self.run_dir}", flush=True)
            return 0
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
        return None

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

    def _nonfinite(self, iteration, batch, parts) -> int:
        path = os.path.join(self.run_dir, "nonfinite_batch.json")
        record = {"iteration": iteration + 1, "image_ids": [str(i) for i in batch.ids],
                  "lr": float(self.optimizer.lr)}
        if parts is not None:
            record.update(loss=repr(parts.total), conf=repr(parts.conf), loc=repr(parts.loc),
                          num_pos=parts.num_pos)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        kept = (f"the last good checkpoint is {self.last_path} (iteration {self.last_saved})"
                if os.path.exists(self.last_path) else "no checkpoint had been written yet")
        print(f"minissd.train: the loss became NaN/inf at iteration {iteration + 1} (lr {self.optimizer.lr:.4g}); "
              f"training stopped and {kept}.\nThe batch's image ids are in {path}.\nTry: a lower learning "
              f"rate or a longer warmup (python -m minissd.train --resume {self.run_dir} --lr "
              f"{self.c['lr'] / 2:g} continues from that checkpoint at half the rate), and check those images' "
              f"boxes (zero-size, inverted or outside the image).", file=sys.stderr, flush=True)
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
        with open(os.path.join(self.run_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(finite_or_none(summary), f, indent=2, sort_keys=True)
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


def _close_stream(stream):
    try:
        stream.close()
    except Exception:
        pass

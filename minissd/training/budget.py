"""The time budget (--max-minutes): plan the run's length to what fits, and stop before overrunning.

How many iterations fit in ten minutes depends on the machine, and on a shared one on the neighbours.
So the run measures its speed over iterations PLAN_FROM..PLAN_AT of a session (the first few are
slower: caches, thread pools, page faults) and plans its length to what fits together with the
periodic and final evaluations; it re-plans every REPLAN_EVERY iterations and after each validation
until the learning rate's first decay (moving the decay after it has begun would break the schedule);
after that a guard stops the run early when the end (final validation and test passes, figures,
checkpoints) would no longer fit. `TimeBudget` holds the clock and the speeds; the trainer applies a
plan (schedule, log record, message).
"""
from __future__ import annotations

import time

PLAN_FROM, PLAN_AT = 5, 25
REPLAN_EVERY = 50   # and after each validation, until the first decay


class TimeBudget:
    """The deadline of a session and the speeds measured so far.

    minutes : the budget (0 or None: no limit; then `plan_due` and `overruns` never fire).
    t_start : `time.perf_counter()` when the session started (setup counts).
    batch_size, eval_every, checkpoint_every : the run's settings, for the cost of an iteration.
    val_images : images of one periodic validation (0 without validation data).
    final_images : images the end of the run evaluates (final validation + test).
    """

    def __init__(self, minutes, t_start: float, *, batch_size: int, eval_every: int, checkpoint_every: int,
                 val_images: int, final_images: int, start: int = 0):
        self.minutes = minutes
        self.deadline = t_start + 60.0 * minutes if minutes else None
        self.batch_size = batch_size
        self.eval_every = eval_every
        self.checkpoint_every = checkpoint_every
        self.val_images = val_images
        self.final_images = final_images
        self.start = start                  # the iteration this session starts at
        self.train_images, self.train_time = 0, 0.0
        self.eval_images, self.eval_time = 0, 0.0
        self._mark = (start, 0.0)           # (iteration, train_time) the speed is measured from

    def add_train(self, images: int, seconds: float) -> None:
        self.train_images += images
        self.train_time += seconds

    def add_eval(self, images: int, seconds: float) -> None:
        self.eval_images += images
        self.eval_time += seconds

    def plan_due(self, iteration: int, planned: bool, decay_start, evaluated: bool) -> float | None:
        """Seconds per training step to (re)plan with after ``iteration``, or None when no plan is due.

        The first plan comes at PLAN_AT iterations into the session (unless the run already holds
        one: ``planned``, e.g. on resume); re-plans come every REPLAN_EVERY iterations or after a
        validation (``evaluated``), while ``iteration < decay_start()``.
        """
        done = iteration - self.start
        if done == PLAN_FROM:
            self._mark = (iteration, self.train_time)
            return None
        if self.deadline is None:
            return None
        since, time_since = self._mark
        if done == PLAN_AT and not planned:
            per_iter = (self.train_time - time_since) / (iteration - since)
        elif done > PLAN_AT and iteration < decay_start() and (evaluated or iteration - since >= REPLAN_EVERY):
            per_iter = (self.train_time - time_since) / max(iteration - since, 1)
        else:
            return None
        self._mark = (iteration, self.train_time)
        return per_iter

    def fit(self, iteration: int, per_iter: float, configured: int) -> int:
        """The run length that fits the time left at ``per_iter`` seconds a step (at most ``configured``)."""
        left = self.deadline - time.perf_counter() - self.final_cost()
        if self.eval_images:
            per_image_eval = self.eval_time / self.eval_images
        else:   # inference costs about a third of a training step per image
            per_image_eval = per_iter / (3.0 * self.batch_size)
        eval_per_iter = 0.0
        if self.eval_every and self.val_images:
            eval_per_iter = self.val_images * per_image_eval / self.eval_every
        checkpoint_per_iter = 0.2 / self.checkpoint_every if self.checkpoint_every else 0.0
        fit = iteration + int(0.97 * max(left, 0.0) / (per_iter + eval_per_iter + checkpoint_per_iter))
        return max(min(fit, configured), iteration + 1)

    def final_cost(self) -> float:
        """Seconds the end of the run will take: final val + test passes, figures, checkpoints."""
        n = 8 + self.final_images  # 8: detections.png
        if self.eval_images:
            rate = self.eval_images / max(self.eval_time, 1e-9)
        else:  # no evaluation yet: inference costs about a third of a training step per image
            rate = 3.0 * self.train_images / max(self.train_time, 1e-9) if self.train_images else 1e9
        return n / max(rate, 1e-9) + 10.0

    def overruns(self, iteration: int, total: int) -> bool:
        """The guard: True when stopping now is needed to leave time for the end of the run."""
        return (self.deadline is not None and iteration < total and iteration - self.start > PLAN_AT
                and time.perf_counter() + self.final_cost() > self.deadline)

"""Training: one SGD iteration (`train_step`), the run around it (`Trainer`), and its bookkeeping.

    step.py      train_step: targets, forward, loss forward/backward, backward, SGD step (section 2.2)
    trainer.py   Trainer: the loop over batches, evaluation, checkpoints, the end-of-run report
    recipe.py    the pieces from a config: model, optimizer (Caffe groups), schedule, augmentation
    budget.py    TimeBudget: --max-minutes, the run's length planned to what fits
    state.py     run checkpoints: the training state as arrays + JSON, and back
    runlog.py    metrics.jsonl, the progress display, Ctrl-C, the per-class AP table

The command around it is minissd/train.py (``python -m minissd.train``).
Walkthrough: docs/08-training.md
"""
from .budget import TimeBudget
from .recipe import (
                     build_model_for,
                     make_optimizer,
                     make_schedule,
                     make_train_transform,
                     parse_milestones,
                     total_iterations,
)
from .runlog import (
                     append_jsonl,
                     finite_or_none,
                     format_ap_table,
                     read_jsonl,
                     truncate_jsonl,
)
from .state import (
                     STATE_KIND,
                     flatten,
                     restore_training_state,
                     training_state,
                     unflatten,
)
from .step import STAGES, BatchUpload, StageTimer, train_step
from .trainer import EXIT_INTERRUPTED, EXIT_NONFINITE, Trainer

__all__ = ["train_step", "StageTimer", "BatchUpload", "STAGES", "Trainer", "TimeBudget", "EXIT_NONFINITE",
           "EXIT_INTERRUPTED", "make_optimizer", "make_schedule", "make_train_transform", "build_model_for",
           "parse_milestones", "total_iterations", "STATE_KIND", "flatten", "unflatten", "training_state",
           "restore_training_state", "append_jsonl", "read_jsonl", "truncate_jsonl", "finite_or_none",
           "format_ap_table"]

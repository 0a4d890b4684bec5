"""minissd.training.train_step is the trainer's iteration, and the pieces around it.

The trainer's first iteration, rebuilt by hand from the run's resolved config.json (model, optimizer,
schedule, loss, augmented loader) and one call of `train_step`, must give the trainer's weights and
momentum bit for bit: the loop adds nothing to the step.
"""
import json
import math
import os

import numpy as np
import pytest

from minissd import train
from minissd.checkpoint import load_checkpoint
from minissd.data import DataLoader, open_data
from minissd.loss import LossParts, MultiBoxLoss
from minissd.training import (
    BatchUpload,
    StageTimer,
    TimeBudget,
    Trainer,
    build_model_for,
    flatten,
    make_optimizer,
    make_schedule,
    make_train_transform,
    train_step,
)

TINY = ["--train-limit", "4", "--batch-size", "2", "--val-dataset", "none", "--test-dataset", "none",
        "--eval-every", "0", "--warmup", "2", "--lr", "0.01", "--progress", "none", "--max-minutes", "0",
        "--num-workers", "0", "--iterations", "1"]


def pieces(c):
    """Model, loss, optimizer and the first batch of a run, as minissd/training/trainer.py builds them."""
    ds = open_data(c["dataset"], c["train_limit"], "train")
    model = build_model_for(c, len(ds.class_names), c["seed"])
    model.train()
    model.input_grad = False
    optimizer = make_optimizer(model, c["lr"], c["momentum"], c["weight_decay"])
    optimizer.lr = float(make_schedule(c, c["iterations"])(0))
    loader = DataLoader(ds, c["batch_size"], make_train_transform(c, model), shuffle=True, seed=c["seed"],
                        num_workers=0, drop_last=True)
    return model, MultiBoxLoss(neg_pos_ratio=c["neg_pos_ratio"]), optimizer, next(iter(loader))


@pytest.fixture(scope="module")
def one_iteration(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("step") / "run")
    assert train.main([*TINY, "--out", out]) == 0
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    arrays, _ = load_checkpoint(os.path.join(out, "last.npz"))
    return config, arrays


def test_train_step_is_the_trainers_first_iteration(one_iteration):
    config, ref = one_iteration
    model, loss_fn, optimizer, batch = pieces(config)
    parts = train_step(model, loss_fn, optimizer, batch, threshold=config["match_threshold"],
                       strategy=config["match"])
    assert isinstance(parts, LossParts) and math.isfinite(parts.total) and parts.num_pos > 0
    state = model.state_dict()
    assert set(state) <= set(ref)
    for name, value in state.items():
        assert np.array_equal(value, ref[name]), name
    momentum = {}
    flatten("optim", optimizer.state_dict(), momentum)      # as the checkpoint stores it
    assert momentum and set(momentum) == {k for k in ref if k.startswith("optim/")}
    for name, value in momentum.items():
        assert np.array_equal(value, ref[name]), name


def test_the_comparison_can_fail(one_iteration):
    # The same step at another learning rate does not give the trainer's weights.
    config, ref = one_iteration
    model, loss_fn, optimizer, batch = pieces(config)
    optimizer.lr = optimizer.lr * 2
    train_step(model, loss_fn, optimizer, batch)
    assert not np.array_equal(model.state_dict()["conf.conv4.W"], ref["conf.conv4.W"])


def test_a_nonfinite_loss_applies_no_update(one_iteration, monkeypatch):
    config, _ = one_iteration
    model, loss_fn, optimizer, batch = pieces(config)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    forward = MultiBoxLoss.forward
    monkeypatch.setattr(MultiBoxLoss, "forward",
                        lambda self, *a: forward(self, *a)._replace(total=float("nan")))
    parts = train_step(model, loss_fn, optimizer, batch)
    assert math.isnan(parts.total)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_stage_timer_sees_every_stage_and_upload_passes_numpy_through(one_iteration):
    config, _ = one_iteration
    model, loss_fn, optimizer, batch = pieces(config)
    totals = dict.fromkeys(("data", "targets", "forward", "loss", "backward", "step"), 0.0)
    timer = StageTimer(totals)
    upload = BatchUpload("cpu")
    assert upload(batch.images) is batch.images            # CPU: no copy
    train_step(model, loss_fn, optimizer, batch, upload=upload, timer=timer)
    assert all(v > 0 for v in totals.values()), totals


def test_stage_timers_are_optional(tmp_path):
    # Without per-stage timers (the default on a GPU) results.json keeps the steps' total as "train".
    config, _ = train.parse_config([*TINY, "--out", str(tmp_path / "run")])
    train.resolve_eval_specs(config)
    train.resolve_augment(config)
    config["device"] = "cpu"
    assert Trainer(config, str(tmp_path / "run"), profile=False).run() == 0
    with open(tmp_path / "run" / "results.json", encoding="utf-8") as f:
        times = json.load(f)["time_s"]
    assert set(times) == {"data", "train", "eval", "checkpoint"}


def test_time_budget_plans_at_plan_at_and_replans_until_the_decay():
    b = TimeBudget(1.0, 0.0, batch_size=2, eval_every=0, checkpoint_every=0, val_images=0, final_images=0)
    seen = {}
    for it in range(1, 200):
        b.add_train(2, 0.5)
        per = b.plan_due(it, planned=False, decay_start=lambda: 120, evaluated=(it == 60))
        if per is not None:
            seen[it] = per
    # the first plan after 25 steps (speed from step 5 on), then every 50 steps or after a validation,
    # none from the decay on
    assert seen == {25: 0.5, 60: 0.5, 110: 0.5}
    assert TimeBudget(0, 0.0, batch_size=2, eval_every=0, checkpoint_every=0, val_images=0,
                      final_images=0).plan_due(25, False, lambda: 100, False) is None

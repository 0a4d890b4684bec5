"""The training command in-process: exact resume, Ctrl-C, NaN handling, the run directory.

Runs are tiny (a few images of the shapes dataset, batch 4, a handful of iterations) so the file
stays fast; tests/test_cli.py drives the same code through subprocesses.
"""
import json
import os
import signal

import numpy as np
import pytest

from minissd import train
from minissd.checkpoint import load_checkpoint
from minissd.training import budget, recipe, runlog
from minissd.training import state as run_state

TINY = ["--train-limit", "6", "--batch-size", "2", "--val-dataset", "none", "--test-dataset", "none",
        "--eval-every", "0", "--warmup", "2", "--lr", "0.01", "--log-every", "1", "--progress", "none",
        "--max-minutes", "0"]


def run(tmp_path, name, *args):
    out = str(tmp_path / name)
    code = train.main([*TINY, "--out", out, *args])
    return code, out


def arrays_of(path):
    arrays, meta = load_checkpoint(path)
    return arrays, meta


def assert_bitwise_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), f"{k} differs (max abs diff {np.abs(a[k] - b[k]).max()})"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """4 uninterrupted iterations with one loader worker (the default path)."""
    tmp = tmp_path_factory.mktemp("ref")
    code = train.main([*TINY, "--out", str(tmp / "ref"), "--iterations", "4", "--num-workers", "1"])
    assert code == 0
    return str(tmp / "ref")


def test_resume_is_bitwise_exact(tmp_path, reference_run):
    # 2 iterations, stop (as if interrupted), then resume to 4: same weights, momentum and loader
    # position as the uninterrupted run, bit for bit. With 6 images in batches of 2 the resumed
    # part also crosses into the second epoch (a new shuffle).
    code, out = run(tmp_path, "split", "--iterations", "4", "--num-workers", "1", "--stop-at", "2")
    assert code == 0
    _, meta = arrays_of(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 2
    assert train.main(["--resume", out, "--progress", "none"]) == 0
    ref, ref_meta = arrays_of(os.path.join(reference_run, "last.npz"))
    got, got_meta = arrays_of(os.path.join(out, "last.npz"))
    assert got_meta["iteration"] == ref_meta["iteration"] == 4
    assert any(k.startswith("optim/") for k in got), "the optimizer state must be in the checkpoint"
    assert_bitwise_equal(ref, got)
    assert got_meta["loader"] == ref_meta["loader"]
    # The metrics log of the resumed run is the uninterrupted run's log (same losses, same iterations).
    losses = [[r["loss"] for r in runlog.read_jsonl(os.path.join(d, "metrics.jsonl")) if "loss" in r]
              for d in (reference_run, out)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_resume_differs_from_a_fresh_start(tmp_path, reference_run):
    # The equality above is not vacuous: 3 more iterations from scratch are not the resumed run.
    code, out = run(tmp_path, "three", "--iterations", "3", "--num-workers", "1")
    assert code == 0
    ref, _ = arrays_of(os.path.join(reference_run, "last.npz"))
    got, _ = arrays_of(os.path.join(out, "last.npz"))
    assert not np.array_equal(ref["conf.conv4.W"], got["conf.conv4.W"])


def test_ctrl_c_saves_and_resume_matches(tmp_path, reference_run, monkeypatch):
    # A SIGINT during iteration 2 finishes that step, saves, exits 130; --resume ends where the
    # uninterrupted run ends.
    from minissd.loss import MultiBoxLoss

    calls = {"n": 0}
    forward = MultiBoxLoss.forward

    def interrupting_forward(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *a, **k)

    monkeypatch.setattr(MultiBoxLoss, "forward", interrupting_forward)
    code, out = run(tmp_path, "intr", "--iterations", "4", "--num-workers", "1")
    assert code == train.EXIT_INTERRUPTED
    _, meta = arrays_of(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 2
    monkeypatch.setattr(MultiBoxLoss, "forward", forward)
    assert train.main(["--resume", out, "--progress", "none"]) == 0
    ref, _ = arrays_of(os.path.join(reference_run, "last.npz"))
    got, _ = arrays_of(os.path.join(out, "last.npz"))
    assert_bitwise_equal(ref, got)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from minissd.loss import LossParts, MultiBoxLoss

    calls = {"n": 0}
    forward = MultiBoxLoss.forward

    def nan_at_4(self, *a, **k):
        calls["n"] += 1
        parts = forward(self, *a, **k)
        return LossParts(float("nan"), parts.conf, float("nan"), parts.num_pos) if calls["n"] == 4 else parts

    monkeypatch.setattr(MultiBoxLoss, "forward", nan_at_4)
    code, out = run(tmp_path, "nan", "--iterations", "5", "--num-workers", "0", "--checkpoint-every", "2")
    assert code == train.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "iteration 4" in err and "--lr" in err
    record = json.load(open(os.path.join(out, "nonfinite_batch.json")))
    assert record["iteration"] == 4
    assert len(record["image_ids"]) == 2 and all(i.startswith("train_") for i in record["image_ids"])
    arrays, meta = arrays_of(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 2
    assert all(np.isfinite(a).all() for k, a in arrays.items() if a.dtype.kind == "f")


def test_run_directory_contents(tmp_path):
    out = str(tmp_path / "full")
    code = train.main(["--train-limit", "4", "--batch-size", "2", "--iterations", "4", "--warmup", "1", "--lr", "0.01",
                       "--val-limit", "2", "--test-limit", "2", "--eval-every", "2", "--progress", "none",
                       "--num-workers", "0", "--out", out])
    assert code == 0
    for name in ("config.json", "metrics.jsonl", "last.npz", "best.npz", "curves.png", "detections.png",
                 "results.json"):
        assert os.path.exists(os.path.join(out, name)), name
    config = json.load(open(os.path.join(out, "config.json")))
    # Resolved: every option is there, with the defaults filled in.
    assert set(train.DEFAULTS) <= set(config)
    assert config["val_dataset"] == "shapes:val" and config["test_dataset"] == "shapes:test"
    assert config["device"] == "cpu"
    assert config["augment"] == "flip"          # "auto" resolved for shapes
    records = runlog.read_jsonl(os.path.join(out, "metrics.jsonl"))
    evals = [r for r in records if r.get("split") == "val"]
    assert [r["iteration"] for r in evals] == [2, 4]
    assert [r["iteration"] for r in records if r.get("split") == "test"] == [4]
    results = json.load(open(os.path.join(out, "results.json")))
    assert 0.0 <= results["test"]["map07"] <= 1.0
    assert set(results["test"]["ap07"]) == {"circle", "square", "triangle", "cross"}


def test_last_line_is_the_test_map(tmp_path, capsys):
    out = str(tmp_path / "last")
    assert train.main(["--train-limit", "2", "--batch-size", "2", "--iterations", "1", "--lr", "0.01",
                       "--test-limit", "2", "--val-dataset", "none", "--progress", "none", "--num-workers", "0",
                       "--out", out]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("test mAP@0.5: ")
    value = float(lines[-1].split(": ")[1])
    results = json.load(open(os.path.join(out, "results.json")))
    assert value == pytest.approx(results["test"]["map07"], abs=5e-4)


def test_help_explains_every_option(capsys):
    parser = train.build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, action.option_strings
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--dataset", "--model", "--device", "--iterations", "--epochs", "--batch-size", "--lr",
                "--schedule", "--match", "--seed", "--out", "--resume"):
        assert opt in text


def test_bad_options_are_reported(tmp_path, capsys):
    assert train.main(["--lr", "-1", "--out", str(tmp_path / "a")]) == 1
    assert "--lr" in capsys.readouterr().err
    assert train.main(["--milestones", "300,100", "--out", str(tmp_path / "b")]) == 1
    assert "--milestones" in capsys.readouterr().err
    assert train.main(["--device", "tpu", "--out", str(tmp_path / "c")]) == 1
    assert "tpu" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "nowhere")]) == 1
    assert "config.json" in capsys.readouterr().err


def test_resume_refuses_to_change_the_recipe(tmp_path, reference_run, capsys):
    assert train.main(["--resume", reference_run, "--batch-size", "8"]) == 1
    assert "--batch-size cannot change" in capsys.readouterr().err


def test_existing_run_directory_is_not_overwritten(tmp_path, reference_run, capsys):
    assert train.main([*TINY, "--out", reference_run, "--iterations", "1"]) == 1
    assert "--resume" in capsys.readouterr().err


def test_state_flatten_round_trip():
    state = {"step": 3, "lr": 0.5, "buffers": {"a.W": np.arange(6.0).reshape(2, 3), "b": np.zeros(2)},
             "order": [np.array([3, 1, 2]), 7], "name": "x", "none": None}
    arrays = {}
    skeleton = run_state.flatten("optim", state, arrays)
    json.dumps(skeleton)  # the skeleton goes into JSON metadata
    back = run_state.unflatten(skeleton, arrays)
    assert back["step"] == 3 and back["lr"] == 0.5 and back["name"] == "x" and back["none"] is None
    assert np.array_equal(back["buffers"]["a.W"], state["buffers"]["a.W"])
    assert np.array_equal(back["order"][0], state["order"][0]) and back["order"][1] == 7
    assert set(arrays) == {"optim/buffers/a.W", "optim/buffers/b", "optim/order/0"}


def test_format_ap_table():
    result = {"ap07": {1: 1.0, 2: 0.5}, "ap_area": {1: 1.0, 2: 0.25}, "num_gt": {1: 3, 2: 2},
              "map07": 0.75, "map_area": 0.625}
    text = runlog.format_ap_table(result, ["circle", "square"], "title")
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[2].split() == ["circle", "3", "1.000", "1.000"]
    assert lines[3].split() == ["square", "2", "0.500", "0.250"]
    assert lines[4].split() == ["mean", "5", "0.750", "0.625"]


def test_time_plan_shortens_the_run_and_is_kept_on_resume(tmp_path, monkeypatch, capsys):
    # A budget far too small for 50 iterations: after measuring the speed (iterations 1-3 here) the
    # run is planned shorter, the plan goes into the checkpoint, and a resume follows it.
    monkeypatch.setattr(budget, "PLAN_FROM", 1)
    monkeypatch.setattr(budget, "PLAN_AT", 3)
    out = str(tmp_path / "plan")
    code = train.main([*TINY, "--out", out, "--iterations", "50", "--max-minutes", "0.001",
                       "--num-workers", "0"])
    assert code == 0
    text = capsys.readouterr().out
    assert "time plan" in text
    _, meta = arrays_of(os.path.join(out, "last.npz"))
    assert meta["planned_iterations"] == meta["iteration"] == 4
    assert meta["train_config"]["iterations"] == 50
    assert train.main(["--resume", out, "--progress", "none", "--max-minutes", "0"]) == 0
    _, meta = arrays_of(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 4


def test_fractional_milestones():
    assert recipe.parse_milestones({"milestones": "0.5,0.9"}, 200) == [100, 180]
    assert recipe.parse_milestones({"milestones": "300,400"}, 1000) == [300, 400]
    sched = recipe.make_schedule(dict(train.DEFAULTS, milestones="0.5", warmup=0, lr=0.1), 10)
    assert sched(4) == pytest.approx(0.1) and sched(5) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="--milestones"):
        recipe.parse_milestones({"milestones": "2.5"}, 10)


# -- reliability (issue 16) ------------------------------------------------------------------------
def test_sigterm_is_handled_like_ctrl_c(tmp_path, reference_run, monkeypatch):
    from minissd.loss import MultiBoxLoss

    calls = {"n": 0}
    forward = MultiBoxLoss.forward

    def terminating_forward(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *a, **k)

    monkeypatch.setattr(MultiBoxLoss, "forward", terminating_forward)
    code, out = run(tmp_path, "term", "--iterations", "4", "--num-workers", "1")
    assert code == train.EXIT_INTERRUPTED
    _, meta = arrays_of(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 2
    monkeypatch.setattr(MultiBoxLoss, "forward", forward)
    assert train.main(["--resume", out, "--progress", "none"]) == 0
    assert_bitwise_equal(arrays_of(os.path.join(reference_run, "last.npz"))[0],
                         arrays_of(os.path.join(out, "last.npz"))[0])
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))


def _val_records(out):
    return [(r["iteration"], r["map"], r["ap"]) for r in runlog.read_jsonl(os.path.join(out, "metrics.jsonl"))
            if r.get("split") == "val"]


def test_ctrl_c_during_validation_is_redone_on_resume(tmp_path, monkeypatch):
    # Ctrl-C while the periodic validation at iteration 2 runs: the state records it as pending, and the
    # resumed run does it first, so the metrics log holds the same validations as an uninterrupted run.
    from minissd.training import trainer as trainer_mod

    args = ["--iterations", "4", "--eval-every", "2", "--val-dataset", "shapes:val", "--val-limit", "2",
            "--num-workers", "0"]
    code, ref = run(tmp_path, "ref", *args)
    assert code == 0
    real = trainer_mod.evaluate_model
    calls = {"n": 0}

    def interrupted(*a, should_stop=None, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGINT)   # the flag is set; the evaluation sees should_stop()
        return real(*a, should_stop=should_stop, **k)

    monkeypatch.setattr(trainer_mod, "evaluate_model", interrupted)
    code, out = run(tmp_path, "cut", *args)
    assert code == train.EXIT_INTERRUPTED
    _, meta = arrays_of(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 2 and meta["pending_eval"] == 2
    assert _val_records(out) == []
    monkeypatch.setattr(trainer_mod, "evaluate_model", real)
    assert train.main(["--resume", out, "--progress", "none"]) == 0
    assert _val_records(out) == _val_records(ref) and [r[0] for r in _val_records(ref)] == [2, 4]


def test_diverged_weights_are_never_kept_and_the_advice_runs(tmp_path, capsys):
    # --lr 1e4 multiplies the weight norm by ~5e4 in one step: the state after iteration 1 is not
    # healthy, so no last.npz is written, the run stops (exit 3), and the advice is a fresh run (no
    # --resume of a checkpoint that does not exist) at a tenth of the rate.
    code, out = run(tmp_path, "lr", "--iterations", "3", "--num-workers", "0", "--lr", "1e4", "--warmup", "0",
                    "--checkpoint-every", "1")
    assert code == train.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "last.npz"))
    assert "weight norm grew" in err and "--resume" not in err
    advice = err.split("Try a lower learning rate or a longer warmup: ")[1].split(" starts the run again")[0]
    assert advice.startswith("python -m minissd.train ") and "--lr 1000" in advice and f"--out {out}" in advice
    argv = advice.split()[3:]
    argv[argv.index("--lr") + 1] = "0.01"   # (a tenth would still diverge; the command itself is valid)
    assert train.main(argv) == 0


def test_nan_after_a_healthy_checkpoint_advises_a_resume_that_works(tmp_path, monkeypatch, capsys):
    from minissd.loss import LossParts, MultiBoxLoss

    forward = MultiBoxLoss.forward
    calls = {"n": 0}

    def nan_at_3(self, *a, **k):
        calls["n"] += 1
        parts = forward(self, *a, **k)
        return LossParts(float("nan"), parts.conf, parts.loc, parts.num_pos) if calls["n"] == 3 else parts

    monkeypatch.setattr(MultiBoxLoss, "forward", nan_at_3)
    code, out = run(tmp_path, "nan", "--iterations", "4", "--num-workers", "0", "--checkpoint-every", "2")
    assert code == train.EXIT_NONFINITE
    err = capsys.readouterr().err
    advice = err.split("longer warmup: ")[1].split(" continues from")[0]
    assert advice == f"python -m minissd.train --resume {out} --lr 0.001"
    monkeypatch.setattr(MultiBoxLoss, "forward", forward)
    assert train.main(advice.split()[3:] + ["--progress", "none"]) == 0


def test_health_rule_bounds(tmp_path):
    from minissd.training import trainer as trainer_mod

    t = trainer_mod.Trainer.__new__(trainer_mod.Trainer)

    class FakeModel:
        def __init__(self, w):
            self.w = np.asarray(w, np.float32)

        def named_parameters(self):
            yield "w", self.w, None

    t.model = FakeModel([3.0, 4.0])
    t._w_ref = t._weight_norm()
    assert t._w_ref == (5.0, 4.0) and t._health(1)[1] is None
    t.model = FakeModel([6.0, 7.9])       # norm x1.99, max x1.98: healthy
    assert t._health(1)[1] is None
    t.model = FakeModel([0.0, 10.1])      # norm x2.02: not
    assert "weight norm grew" in t._health(1)[1]
    t.model = FakeModel([np.nan, 1.0])
    assert "NaN" in t._health(1)[1]


def test_damaged_config_json_falls_back_to_the_checkpoint(tmp_path, capsys):
    code, out = run(tmp_path, "cfg", "--iterations", "2", "--stop-at", "1", "--num-workers", "0")
    assert code == 0
    good = json.load(open(os.path.join(out, "config.json")))
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write('{"lr": 0.01, "batch')
    assert train.main(["--resume", out, "--progress", "none"]) == 0
    assert "config.json" in capsys.readouterr().err
    assert json.load(open(os.path.join(out, "config.json"))) == dict(good, stop_at=None)   # rewritten, whole


def test_temp_files_of_a_killed_write_are_removed_at_start(tmp_path, capsys):
    code, out = run(tmp_path, "tmp", "--iterations", "2", "--stop-at", "1", "--num-workers", "0")
    assert code == 0
    stale = os.path.join(out, ".tmp-999999999-0123456789abcdef.npz")   # no such process
    open(stale, "wb").write(b"x" * 1000)
    assert train.main(["--resume", out, "--progress", "none"]) == 0
    assert not os.path.exists(stale)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_ctrl_c_in_the_final_evaluation_exits_130_and_resume_redoes_it(tmp_path, monkeypatch, capsys):
    from minissd.training import trainer as trainer_mod

    real = trainer_mod.evaluate_model

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "evaluate_model", interrupted)
    code, out = run(tmp_path, "fin", "--iterations", "2", "--num-workers", "0", "--test-dataset", "shapes:test",
                    "--test-limit", "2")
    assert code == train.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "Traceback" not in err and "final evaluation" in err and "--resume" in err
    monkeypatch.setattr(trainer_mod, "evaluate_model", real)
    assert train.main(["--resume", out, "--progress", "none"]) == 0
    tests = [r for r in runlog.read_jsonl(os.path.join(out, "metrics.jsonl")) if r.get("split") == "test"]
    assert [r["iteration"] for r in tests] == [2]
    assert "wall time " in capsys.readouterr().out


def test_format_duration():
    from minissd.training.trainer import format_duration

    assert format_duration(0.4) == "0.4 s" and format_duration(90) == "1.5 min" and format_duration(7200) == "2.00 h"


def test_no_objects_in_training_data_is_refused(tmp_path):
    from minissd.inference import count_objects

    class Records:
        class_names = ("a",)
        records = [{"targets": (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))}] * 3

        def __len__(self):
            return len(self.records)

    assert count_objects(Records()) == 0
    from minissd.data import SkipUnreadable, Subset

    assert count_objects(SkipUnreadable(Subset(Records(), [0, 1]))) == 0
    Records.records = Records.records[:2] + [{"targets": (np.zeros((2, 4)), np.ones(2, np.int64), np.zeros(2, bool))}]
    assert count_objects(Records()) == 2 and count_objects(Subset(Records(), [0, 1])) == 0

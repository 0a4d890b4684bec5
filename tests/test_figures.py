"""The figure scripts' own logic: the trained-model cache, the gallery's failure picking, --run.

The figures themselves are made by scripts/make_figures.py, not by the tests; these checks need no
trained model (a freshly built one stands in for a run's best.npz).
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "scripts" / "figures"


def _load(name, path):
    if str(FIGURES) not in sys.path:
        sys.path.insert(0, str(FIGURES))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained():
    return _load("_trained", FIGURES / "_trained.py")


@pytest.fixture(scope="module")
def gallery():
    return _load("fig_gallery", FIGURES / "fig_gallery.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A directory shaped like a finished run: best.npz of an untrained small model, results.json."""
    from minissd.model import build_model, save_model

    d = tmp_path_factory.mktemp("run")
    model = build_model("small", num_classes=5, rng=np.random.default_rng(0))
    save_model(d / "best.npz", model, {"class_names": ["circle", "square", "triangle", "cross"], "iteration": 7,
                                       "best_map": 0.5, "train_config": {"model": "small", "iterations": 9}})
    (d / "results.json").write_text(json.dumps({"iterations": 9, "test": {"map07": 0.25}}))
    return d


def test_classify_marks_hits_duplicates_wrong_classes_and_misses(gallery):
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    gt_labels = np.array([1, 2, 1])
    det = np.array([[0, 0, 10, 10],      # hits object 0
                    [1, 0, 10, 10],      # a duplicate of object 0: false positive
                    [20, 20, 30, 30],    # right place, wrong class: false positive
                    [40, 40, 50, 50]],   # would hit object 2, but scores under 0.5: not shown
                   float)
    shown, is_tp, missed = gallery.classify(det, [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.4], gt, gt_labels)
    assert shown.tolist() == [0, 1, 2]
    assert is_tp.tolist() == [True, False, False]
    assert missed.tolist() == [False, True, True]


def test_hardness_tags_small_thin_and_occluded_objects(gallery):
    boxes = np.array([[0, 0, 60, 60],        # big, half under the next one: occluded
                      [30, 0, 90, 60],       # on top, nothing over it
                      [100, 100, 110, 108],  # about 9 px of 128: small
                      [0, 100, 60, 120]])    # 60 x 20: thin
    assert gallery.hardness(boxes, (128, 128)) == [["occluded"], [], ["small"], ["thin"]]


def test_pick_puts_images_with_small_misses_first(gallery):
    def det(boxes, labels, scores):
        return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels), "scores": np.array(scores)}

    def gt(boxes, labels):
        return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels)}

    big, small = [0, 0, 60, 60], [100, 100, 110, 110]
    pred = {"detections": [det([big], [1], [0.9]), det([], [], []), det([], [], []),
                           det([big, small], [1, 2], [0.9, 0.6])],
            "ground_truths": [gt([big], [1]), gt([big], [1]), gt([small], [1]), gt([big], [1])],
            "sizes": [(128, 128)] * 4}
    assert gallery.pick(pred) == [(0, "good"), (2, "missed"), (1, "missed"), (3, "false positive")]


def test_cache_state_tells_complete_resumable_and_foreign_runs(trained, tmp_path):
    d = tmp_path / "figure_run"
    assert trained.cache_state(d, 400) == "missing"
    d.mkdir()
    assert trained.cache_state(d, 400) == "other"
    config = {"iterations": 400, "seed": 0, "model": "small", "dataset": "shapes"}
    (d / "config.json").write_text(json.dumps(config))
    assert trained.cache_state(d, 400) == "other"          # settings right, but nothing trained
    (d / "last.npz").write_bytes(b"")
    assert trained.cache_state(d, 400) == "resumable"
    (d / "best.npz").write_bytes(b"")
    (d / "results.json").write_text("{}")
    assert trained.cache_state(d, 400) == "complete"
    assert trained.cache_state(d, 300) == "other"          # another length: retrain
    (d / "config.json").write_text(json.dumps(dict(config, model="ssd300")))
    assert trained.cache_state(d, 400) == "other"


def test_train_command_is_a_short_fixed_seed_run_without_time_limit(trained):
    cmd = trained.train_command("build/x", 123)
    assert cmd[1:3] == ["-m", "minissd.train"]
    for flag, value in (("--out", "build/x"), ("--iterations", "123"), ("--max-minutes", "0"), ("--seed", "0")):
        assert cmd[cmd.index(flag) + 1] == value


def test_trained_model_loads_a_run_and_names_it(trained, run_dir):
    model, meta, d = trained.trained_model(run_dir)
    assert model.num_classes == 5 and meta["iteration"] == 7 and Path(d) == run_dir
    label = trained.run_label(meta, d)
    assert "best.npz at iteration 7 of 9" in label and "val mAP 0.500" in label
    assert trained.test_map(d) == 0.25


def test_trained_model_refuses_a_directory_that_is_not_a_run(trained, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        trained.trained_model(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no best.npz"):
        trained.trained_model(tmp_path)


def test_make_figures_passes_run_to_the_trained_model_figures(run_dir, tmp_path, capsys):
    make_figures = _load("make_figures", ROOT / "scripts" / "make_figures.py")
    assert make_figures.main(["--run", str(tmp_path), "--only", "loss", "--out", str(tmp_path / "o")]) == 2
    assert "no best.npz" in capsys.readouterr().err
    assert make_figures.main(["--run", str(run_dir), "--only", "loss", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "loss_mined_negatives.png").stat().st_size > 10_000

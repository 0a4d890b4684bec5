"""--recipe (the authors' VOC solver), --difficult, --init / --weights, and minissd.evaluate --ap-thresholds.

What ssd_pascal.py sets is written out below by hand (not read from minissd), so a changed preset fails
here. The --init / --weights round trips build SSD300 and load files into it, no training: a trunk file
made from random weights in the reduced-fc VGG16 layout, and a whole-model file from save_model.
"""
import json
import os
import re

import numpy as np
import pytest

from minissd import evaluate, train
from minissd.training.recipe import (
    RECIPES,
    build_model_for,
    check_recipe,
    describe_recipe,
    load_start_weights,
    make_train_transform,
    train_data_options,
)

VOC = "voc:/data/VOCdevkit/VOC0712:trainval"

# ssd_pascal.py (SSD300, VOC07+12): solver_param and the data layer, with the paper's VOC2007-only schedule.
CAFFE_SOLVER = {"batch_size": 32, "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005, "schedule": "multistep",
                "gamma": 0.1, "warmup": 0, "max_minutes": 0.0, "augment": "ssd", "photometric": "caffe",
                "crop": "caffe", "resize": "caffe", "difficult": "train", "crop_min_scale": 0.3,
                "max_expand": 4.0, "match": "bipartite", "match_threshold": 0.5, "neg_pos_ratio": 3.0}


def _config(*argv):
    config, given = train.parse_config(list(argv))
    return config, given


@pytest.mark.parametrize("name, iterations, milestones", [("caffe-voc07+12", 120000, "80000,100000"),
                                                          ("caffe-voc07", 60000, "40000,50000")])
def test_recipe_sets_the_authors_settings_exactly(name, iterations, milestones):
    config, _ = _config("--recipe", name, "--model", "ssd300", "--dataset", VOC)
    for key, value in CAFFE_SOLVER.items():
        assert config[key] == value, key
    assert config["iterations"] == iterations and config["milestones"] == milestones
    check_recipe(config)   # ssd300 on VOC: accepted
    train._check_config(config)


def test_explicit_options_override_the_recipe():
    config, given = _config("--recipe", "caffe-voc07+12", "--model", "ssd512", "--dataset", VOC, "--lr", "5e-4",
                            "--iterations", "1000", "--photometric", "minissd", "--difficult", "drop")
    assert (config["lr"], config["iterations"], config["photometric"], config["difficult"]) == (
        5e-4, 1000, "minissd", "drop")
    assert config["batch_size"] == 32 and config["milestones"] == "80000,100000"   # the rest stays
    line = describe_recipe(config, given)
    assert line.startswith("recipe caffe-voc07+12: ")
    assert "lr 0.0005 (given)" in line and "iterations 1000 (given)" in line and "batch-size 32," in line
    assert "momentum 0.9," in line and "(given)" not in line.split("momentum")[1].split(",")[0]


def test_default_run_is_untouched_by_the_new_options():
    config, _ = _config()
    assert config["recipe"] is None and config["init"] is None and config["weights"] is None
    assert config["difficult"] == "drop" and config["lr"] == 0.04 and config["warmup"] == 100
    train.resolve_augment(config)
    assert config["augment"] == "flip" and config["photometric"] is None   # shapes: flip only, as before


def test_augment_ssd_defaults_to_the_caffe_variants_and_each_can_be_chosen():
    config, _ = _config("--augment", "ssd", "--crop", "minissd")
    train.resolve_augment(config)
    assert (config["photometric"], config["crop"], config["resize"]) == ("caffe", "minissd", "caffe")

    class Model:
        image_size, input_mean, input_std = 64, (1.0, 2.0, 3.0), (1.0, 1.0, 1.0)

    t = make_train_transform(config, Model())
    assert (t.photometric_variant, t.crop_variant, t.resize_variant) == ("caffe", "minissd", "caffe")
    assert t.photometric_options["variant"] == "caffe"
    # a run made before the options existed (config without them) keeps minissd's variants
    old = {k: v for k, v in config.items() if k not in ("photometric", "crop", "resize")}
    t = make_train_transform(old, Model())
    assert (t.photometric_variant, t.crop_variant, t.resize_variant) == ("minissd",) * 3


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "caffe-voc07+12", "--dataset", VOC], "give --model ssd300 or --model ssd512 (got --model small)"),
    (["--recipe", "caffe-voc07", "--model", "ssd300"], "give VOC training data, --dataset voc:PATH[:SPLIT] "
                                                       "(got --dataset shapes)"),
])
def test_recipe_needs_ssd300_or_ssd512_and_voc(argv, message, capsys, tmp_path):
    assert train.main(argv + ["--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "run")


def test_recipe_settings_print_at_start(tmp_path, capsys, monkeypatch):
    # stop right after the options are resolved: the line is printed before any data is opened
    monkeypatch.setattr(train, "resolve_device", lambda device: (_ for _ in ()).throw(ValueError("stop here")))
    train.main(["--recipe", "caffe-voc07+12", "--model", "ssd300", "--dataset", VOC, "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert out == ("recipe caffe-voc07+12: batch-size 32, lr 0.001, momentum 0.9, weight-decay 0.0005, "
                   "schedule multistep, milestones 80000,100000, gamma 0.1, iterations 120000, warmup 0, "
                   "max-minutes 0, augment ssd, photometric caffe, crop caffe, resize caffe, crop-min-scale 0.3, "
                   "max-expand 4, difficult train, match bipartite, match-threshold 0.5, neg-pos-ratio 3, "
                   "eval-every 10000, checkpoint-every 1000\n")


def test_every_recipe_key_is_an_option():
    for preset in RECIPES.values():
        assert set(preset) <= set(train.DEFAULTS)


# -- --difficult -----------------------------------------------------------------------------------
def _tiny_voc(root):
    """A VOC directory of two 64 x 48 images: one plain object and one marked difficult."""
    from PIL import Image

    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    objects = {"a": [("dog", 0)], "b": [("cat", 0), ("dog", 1)]}
    for image_id, objs in objects.items():
        Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
        xml = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>5</xmin><ymin>6</ymin>"
                      f"<xmax>40</xmax><ymax>30</ymax></bndbox></object>" for n, d in objs)
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(f"<annotation><size><width>64</width><height>48</height></size>{xml}</annotation>")
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("a\nb\n")
    return root


def test_difficult_train_keeps_voc_difficult_objects(tmp_path):
    from minissd.data.specs import open_data
    from minissd.inference import count_objects

    spec = f"voc:{_tiny_voc(str(tmp_path / 'VOC'))}"
    dropped = open_data(spec, None, "train", "--dataset", **train_data_options({"dataset": spec, "difficult": "drop"}))
    kept = open_data(spec, None, "train", "--dataset", **train_data_options({"dataset": spec, "difficult": "train"}))
    assert count_objects(dropped) == 2 and count_objects(kept) == 3


def test_difficult_option_is_checked():
    assert train_data_options({"dataset": "shapes", "difficult": "train"}) == {}   # shapes: none to keep
    with pytest.raises(ValueError, match="--difficult train applies to VOC data"):
        train_data_options({"dataset": "coco:a.json:img", "difficult": "train"})
    with pytest.raises(SystemExit):
        train.parse_config(["--difficult", "keep"])


def test_difficult_train_reaches_the_run_and_config_json(tmp_path):
    spec = f"voc:{_tiny_voc(str(tmp_path / 'VOC'))}"
    out = tmp_path / "run"
    status = train.main(["--dataset", spec, "--difficult", "train", "--iterations", "1", "--batch-size", "2",
                         "--warmup", "0", "--eval-every", "0", "--max-minutes", "0", "--progress", "none",
                         "--augment", "none", "--out", str(out)])
    assert status == 0
    config = json.loads((out / "config.json").read_text())
    assert config["difficult"] == "train" and config["augment"] == "none"


# -- --init / --weights ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    from minissd.pretrained import save_trunk, vgg16_trunk_from_reducedfc
    from test_convert import synthetic_reducedfc_state

    arrays, meta = vgg16_trunk_from_reducedfc(synthetic_reducedfc_state(np.random.default_rng(5)))
    path = save_trunk(tmp_path_factory.mktemp("trunk") / "vgg16_trunk.npz", arrays, meta)
    return str(path), arrays


def test_init_loads_the_trunk_only_and_records_the_input_convention(trunk_file):
    path, arrays = trunk_file
    c = {"model": "ssd300", "init": path, "weights": None}
    model = build_model_for(c, 20, seed=0)
    fresh = {k: np.array(v) for k, v in model.state_dict().items()}
    line = load_start_weights(c, model)
    assert line.startswith(f"weights: VGG16 trunk (extras and heads fresh) from {path} (converted from reduced-fc")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, arrays[key] if key.startswith("trunk.") else fresh[key])
    # the reduced-fc file is Caffe's: mean (123, 117, 104) RGB, 0..255, std 1; recorded for config.json
    assert c["input_mean"] == [123.0, 117.0, 104.0] and c["input_std"] == [1.0, 1.0, 1.0]
    assert tuple(model.input_mean) == (123.0, 117.0, 104.0)
    # a resume rebuilds the same normalisation from the config alone
    again = build_model_for(dict(c, input_mean=[1.0, 2.0, 3.0], input_std=[4.0, 5.0, 6.0]), 20, seed=0)
    assert tuple(again.input_mean) == (1.0, 2.0, 3.0) and tuple(again.input_std) == (4.0, 5.0, 6.0)


def test_init_mismatch_names_the_first_parameter(trunk_file, tmp_path):
    from minissd.pretrained import read_trunk, save_trunk

    arrays, meta = read_trunk(trunk_file[0])
    arrays = dict(arrays)
    arrays["trunk.conv3_2.W"] = arrays["trunk.conv3_2.W"][:, :128]
    bad = save_trunk(tmp_path / "bad.npz", arrays, meta)
    c = {"model": "ssd300", "init": str(bad), "weights": None}
    with pytest.raises(ValueError) as err:
        load_start_weights(c, build_model_for(c, 20, seed=0))
    message = str(err.value)
    assert message.startswith(f"--init {bad}: ") and "'trunk.conv3_2.W'" in message and "\n" not in message


def test_init_and_weights_refuse_what_cannot_work(trunk_file, tmp_path, capsys):
    with pytest.raises(ValueError, match="--init loads a VGG16 trunk, which only --model ssd300 or ssd512 has"):
        c = {"model": "small", "init": trunk_file[0], "weights": None}
        load_start_weights(c, build_model_for(c, 4, seed=0))
    with pytest.raises(ValueError, match="--init and --weights exclude each other"):
        c = {"model": "ssd300", "init": trunk_file[0], "weights": trunk_file[0]}
        load_start_weights(c, None)
    with pytest.raises(ValueError, match="is a trunk file"):   # a trunk file is not a whole model
        c = {"model": "ssd300", "init": None, "weights": trunk_file[0]}
        load_start_weights(c, build_model_for(c, 20, seed=0))
    # forbidden on --resume: the weights come from the checkpoint
    assert train.main(["--resume", str(tmp_path), "--init", trunk_file[0]]) == 1
    assert "--init cannot be given with --resume: the weights come from the checkpoint" in capsys.readouterr().err
    # the command's one line for the small model
    assert train.main(["--init", trunk_file[0], "--out", str(tmp_path / "r"), "--progress", "none"]) == 1
    assert "--init loads a VGG16 trunk" in capsys.readouterr().err


def test_weights_round_trip_and_class_mismatch(tmp_path):
    from minissd.model import save_model

    source = build_model_for({"model": "ssd300"}, 20, seed=7)
    source.input_mean, source.input_std = (0.485 * 255, 0.456 * 255, 0.406 * 255), (58.0, 57.0, 57.5)
    path = str(save_model(tmp_path / "ssd300.npz", source, {"class_names": [f"c{i}" for i in range(20)]}))
    c = {"model": "ssd300", "init": None, "weights": path}
    model = build_model_for(c, 20, seed=0)
    assert load_start_weights(c, model).startswith(f"weights: whole model from {path}")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, source.state_dict()[key])
    assert c["input_std"] == [58.0, 57.0, 57.5]
    with pytest.raises(ValueError) as err:   # 10 classes: the confidence heads have other shapes
        load_start_weights(dict(c), build_model_for(c, 10, seed=0))
    message = str(err.value)
    assert message.startswith(f"--weights {path}: ") and "conf" in message and "shape" in message


def test_weights_work_for_the_small_model_too(tmp_path):
    """A previous run's small model is a fine starting point; only a file that does not fit is refused."""
    from minissd.model import save_model

    source = build_model_for({"model": "small"}, 4, seed=3)
    path = str(save_model(tmp_path / "small.npz", source, {"class_names": ["a", "b", "c", "d"]}))
    c = {"model": "small", "init": None, "weights": path}
    model = build_model_for(c, 4, seed=0)
    load_start_weights(c, model)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, source.state_dict()[key])
    with pytest.raises(ValueError, match="does not fit model 'ssd300'"):
        c = {"model": "ssd300", "init": None, "weights": path}
        load_start_weights(c, build_model_for(c, 4, seed=0))


# -- minissd.evaluate --ap-thresholds --------------------------------------------------------------
@pytest.mark.parametrize("convention", ["python", "matlab", "caffe"])
def test_evaluate_prints_the_map_under_another_convention(convention, tmp_path, capsys, monkeypatch):
    from minissd.data import ShapesDataset
    from minissd.model import save_model

    model = build_model_for({"model": "small"}, 4, seed=0)
    names = list(ShapesDataset("test").class_names)
    ckpt = str(save_model(tmp_path / "m.npz", model, {"class_names": names}))
    out = str(tmp_path / "m.json")
    real = evaluate.evaluate_model

    def evaluate_model(*args, **kwargs):   # a distinct number for the convention, so the line must use it
        result = real(*args, **kwargs)
        result["voc"]["map_07_by_thresholds"][convention] = 0.4321
        return result

    monkeypatch.setattr(evaluate, "evaluate_model", evaluate_model)
    assert evaluate.main(["--checkpoint", ckpt, "--limit", "6", "--quiet", "--json", out,
                          "--ap-thresholds", convention]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(open(out).read())
    by = summary["map07_by_thresholds"]
    assert summary["ap_thresholds"] == convention and set(by) == {"exact", "python", "matlab", "caffe"}
    assert last == (f"mAP@0.5: {summary['map07']:.3f} (VOC07 11-point, exact thresholds), "
                    f"{summary['map_area']:.3f} (area), {by[convention]:.3f} (VOC07 11-point, {convention} thresholds)")
    assert by["exact"] == summary["map07"] and by[convention] == 0.4321 and last.endswith(
        f", 0.432 (VOC07 11-point, {convention} thresholds)")


def test_evaluate_default_prints_the_exact_convention_only(tmp_path, capsys):
    from minissd.data import ShapesDataset
    from minissd.model import save_model

    model = build_model_for({"model": "small"}, 4, seed=0)
    ckpt = str(save_model(tmp_path / "m.npz", model, {"class_names": list(ShapesDataset("test").class_names)}))
    assert evaluate.main(["--checkpoint", ckpt, "--limit", "4", "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"mAP@0\.5: \d\.\d{3} \(VOC07 11-point, exact thresholds\), \d\.\d{3} \(area\)", last)
    with pytest.raises(SystemExit):
        evaluate.build_parser().parse_args(["--checkpoint", ckpt, "--ap-thresholds", "float"])


def test_evaluate_on_a_coco_dataset_uses_the_files_own_ground_truth(tmp_path, capsys, monkeypatch):
    """minissd.evaluate on coco: data hands pycocotools the annotation file (mask areas, crowd, ids): its
    12 numbers are coco_evaluate_file's, and the by-size ones differ from boxes-rebuilt ground truth."""
    pytest.importorskip("pycocotools")
    from PIL import Image

    from minissd import inference, metrics
    from minissd.data import COCODataset
    from test_coco import _detections_for, _sized_coco

    rng = np.random.default_rng(13)
    ann_path, images, anns = _sized_coco(tmp_path, rng)
    for img in images:
        Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(tmp_path / img["file_name"])
    ds = COCODataset(ann_path, str(tmp_path))
    detections = _detections_for(ds, anns, rng)
    gts = [{"boxes": ds.records[i]["targets"][0], "labels": ds.records[i]["targets"][1],
            "difficult": ds.records[i]["targets"][2]} for i in range(len(ds))]

    def evaluate_model(model, dataset, **kwargs):   # the detections above instead of a network's
        result = {"detections": detections, "ground_truths": gts, "image_ids": [str(i) for i in ds.image_ids],
                  "sizes": [(480, 640)] * len(ds), "num_images": len(ds)}
        result.update(inference.voc_scores(detections, gts, len(ds.class_names)))
        return result

    monkeypatch.setattr(evaluate, "load_inference_model", lambda path, device: (None, list(ds.class_names), {}))
    monkeypatch.setattr(evaluate, "evaluate_model", evaluate_model)
    out = tmp_path / "m.json"
    assert evaluate.main(["--checkpoint", str(tmp_path / "x.npz"), "--dataset", f"coco:{ann_path}:{tmp_path}",
                          "--quiet", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["coco"]
    official = metrics.coco_evaluate_file(ann_path, detections, ds.image_ids, ds.label_to_category)
    rebuilt = metrics.coco_evaluate(detections, [ds.records[i]["targets"] for i in range(len(ds))],
                                    class_names=ds.class_names)
    for name in metrics.COCO_STAT_NAMES:
        assert got[name] == pytest.approx(official[name], abs=1e-12), name
    assert any(abs(got[n] - rebuilt[n]) > 1e-3 for n in ("APs", "APm", "APl", "ARs", "ARm", "ARl"))


def test_require_torchvision_turns_its_skips_into_failures(tmp_path):
    """.ci/run sets MINISSD_REQUIRE_TORCHVISION: a test that skips for want of torchvision fails instead."""
    import subprocess
    import sys

    (tmp_path / "fake" / "torchvision").mkdir(parents=True)   # "installed", so collection goes on
    (tmp_path / "fake" / "torchvision" / "__init__.py").write_text("")
    (tmp_path / "test_tv.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.skip(reason='torchvision is not installed')\n"
        "def test_tv():\n    pass\n\n"
        "@pytest.mark.skip(reason='something else')\n"
        "def test_other():\n    pass\n")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, MINISSD_REQUIRE_TORCHVISION="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), tests, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                          str(tmp_path / "test_tv.py")], capture_output=True, text=True, env=env, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    # a skip marker acts at setup, so pytest reports it as an error (as for MINISSD_REQUIRE_GPU)
    assert "1 skipped, 1 error" in out and "MINISSD_REQUIRE_TORCHVISION is set but this test skipped" in out
    env.pop("MINISSD_REQUIRE_TORCHVISION")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                          str(tmp_path / "test_tv.py")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0 and "2 skipped" in run.stdout, run.stdout + run.stderr

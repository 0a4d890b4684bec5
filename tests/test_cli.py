"""End to end through the command lines, as a user runs them: train, resume, evaluate, detect.

One tiny run (a few shapes images, batch 4) in subprocesses; the whole file takes seconds.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(module, *args, expect=0, cwd=None):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MINISSD_DEVICE", None)
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=300)
    assert proc.returncode == expect, f"{module} {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train 12 iterations on 8 images (no augmentation, so the loss can only fall by learning)."""
    out = str(tmp_path_factory.mktemp("cli") / "run")
    proc = cli("minissd.train", "--train-limit", "8", "--batch-size", "4", "--iterations", "12",
               "--stop-at", "8", "--augment", "none", "--warmup", "2", "--lr", "0.01", "--log-every", "1",
               "--val-limit", "4", "--test-limit", "4", "--eval-every", "0", "--num-workers", "0",
               "--progress", "lines", "--out", out)
    assert "--resume" in proc.stdout
    resumed = cli("minissd.train", "--resume", out, "--progress", "lines")
    return out, proc, resumed


def test_train_learns_and_resumes(trained):
    out, first, resumed = trained
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 12
    # Overfitting 8 images: the last iterations' loss is well below the first ones'.
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert "resuming" in resumed.stdout and "iteration 8 of 12" in resumed.stdout
    assert resumed.stdout.strip().splitlines()[-1].startswith("test mAP@0.5: ")
    for name in ("best.npz", "last.npz", "curves.png", "detections.png", "config.json"):
        assert os.path.exists(os.path.join(out, name))


def test_evaluate(trained, tmp_path):
    out = trained[0]
    coco = str(tmp_path / "coco.json")
    metrics = str(tmp_path / "metrics.json")
    proc = cli("minissd.evaluate", "--checkpoint", os.path.join(out, "best.npz"), "--split", "val",
               "--limit", "6", "--coco-json", coco, "--json", metrics, "--quiet", "--num-workers", "0")
    text = proc.stdout
    for name in ("circle", "square", "triangle", "cross", "mean", "AP07", "AP(area)"):
        assert name in text
    assert text.strip().splitlines()[-1].startswith("mAP@0.5: ")
    summary = json.load(open(metrics))
    assert summary["num_images"] == 6 and summary["dataset"] == "shapes:val"
    assert summary["inclusive_pixels"] is False
    dets = json.load(open(coco))
    assert isinstance(dets, list)
    for d in dets[:5]:
        assert set(d) >= {"image_id", "category_id", "bbox", "score"} and len(d["bbox"]) == 4


def test_evaluate_reports_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    proc = cli("minissd.evaluate", "--checkpoint", str(bad), expect=1)
    assert "bad.npz" in proc.stderr and "Traceback" not in proc.stderr


def test_detect(trained, tmp_path):
    from PIL import Image

    from minissd.data import ShapesDataset

    images = tmp_path / "images"
    images.mkdir()
    ds = ShapesDataset("test", count=3)
    for i in range(2):
        Image.fromarray(ds.get(i).image).save(images / f"shape{i}.png")
    # A larger, non-square image: boxes must come back in its own pixels.
    big = np.asarray(Image.fromarray(ds.get(2).image).resize((200, 150)))
    Image.fromarray(big).save(tmp_path / "wide.jpg")
    outdir = tmp_path / "dets"
    proc = cli("minissd.detect", "--checkpoint", os.path.join(trained[0], "last.npz"), str(images),
               str(tmp_path / "wide.jpg"), "--threshold", "0.0", "--out", str(outdir))
    assert "wide.jpg" in proc.stdout
    records = json.load(open(outdir / "detections.json"))
    assert [os.path.basename(r["image"]) for r in records] == ["shape0.png", "shape1.png", "wide.jpg"]
    for r in records:
        assert os.path.exists(r["output"])
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"]
            assert d["class"] in ("circle", "square", "triangle", "cross") and 0 <= d["score"] <= 1
    assert (records[2]["width"], records[2]["height"]) == (200, 150)
    png = Image.open(outdir / "wide.png")
    assert png.size[0] >= 200


def test_detect_reports_missing_input(trained, tmp_path):
    proc = cli("minissd.detect", "--checkpoint", os.path.join(trained[0], "last.npz"),
               str(tmp_path / "nope.jpg"), expect=1)
    assert "nope.jpg" in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_while_starting_exits_130_in_one_line(tmp_path):
    # SIGINT or SIGTERM while the modules load or the run is set up: exit 130, no traceback, nothing to
    # resume. (A signal inside the interpreter's own start-up, before any minissd code runs, is Python's
    # business: such an attempt is retried later.)
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    landed = 0
    for k, (sig, delay) in enumerate([(signal.SIGINT, 0.3), (signal.SIGTERM, 0.3), (signal.SIGINT, 0.6),
                                      (signal.SIGTERM, 0.6), (signal.SIGINT, 1.0), (signal.SIGTERM, 1.0)]):
        out = tmp_path / f"run{k}"
        # a run of tiny steps (one ends within a second of the signal when it lands in the loop)
        argv = ["--out", str(out), "--progress", "none", "--train-limit", "4", "--batch-size", "2",
                "--iterations", "100000", "--val-dataset", "none", "--test-dataset", "none", "--max-minutes", "0",
                "--num-workers", "0"]
        proc = subprocess.Popen([sys.executable, "-m", "minissd.train", *argv],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if "Fatal Python error" in err:   # still inside the interpreter's start-up
            continue
        landed += 1
        assert proc.returncode == 130, (sig, delay, proc.returncode, err)
        assert "Traceback" not in err, err
        if "finishing this step" not in err:   # not yet in the training loop (that one saves and says how)
            assert len(err.strip().splitlines()) == 1, err
        assert not (out / "last.npz").exists() or "resume" in err
    assert landed >= 2


def test_detect_with_a_float64_checkpoint(trained, tmp_path):
    # A model saved in float64 runs on float64 input (no hint to Python options the CLI does not have).
    from PIL import Image

    from minissd.model import load_model, save_model

    model, meta = load_model(os.path.join(trained[0], "last.npz"))
    model.astype(np.float64)
    path = save_model(str(tmp_path / "f64.npz"), model, {"class_names": meta["class_names"]})
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "gray.png")
    proc = cli("minissd.detect", "--checkpoint", path, str(tmp_path / "gray.png"), "--out", str(tmp_path / "d"))
    assert "gray.png" in proc.stdout


def test_warnings_print_one_line_without_source(tmp_path):
    # A dataset warning (a box outside its image, dropped) prints as one line, no Python source line.
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    from PIL import Image

    for i in range(2):
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>40</width><height>30</height></size>"
            "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>20</xmax><ymax>20</ymax>"
            "</bndbox></object><object><name>cat</name><bndbox><xmin>30</xmin><ymin>5</ymin><xmax>20</xmax>"
            "<ymax>20</ymax></bndbox></object></annotation>")
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("0\n1\n")
    proc = cli("minissd.train", "--dataset", f"voc:{voc}", "--batch-size", "2", "--iterations", "1",
               "--val-dataset", "none", "--test-dataset", "none", "--progress", "none", "--num-workers", "0",
               "--augment", "none", "--out", str(tmp_path / "run"))
    warns = [line for line in proc.stderr.splitlines() if "BadDataWarning" in line]
    assert warns and all(line.startswith("warning: ") for line in warns), proc.stderr
    assert "warnings.warn" not in proc.stderr and ".py:" not in proc.stderr, proc.stderr

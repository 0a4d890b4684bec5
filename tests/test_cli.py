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
    from minissd.data import ShapesDataset
    from PIL import Image

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

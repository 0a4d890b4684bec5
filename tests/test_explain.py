"""minissd.explain: the trace of one image agrees with the library's own pieces, and the command's errors."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from minissd.data import EvalTransform, ShapesDataset
from minissd.explain import draw, format_trace, main, source_slices, trace
from minissd.loss import MultiBoxLoss
from minissd.model import build_model, save_model


@pytest.fixture(scope="module")
def sample():
    return ShapesDataset("test").get(4)       # 4 objects of 4 sizes: positives on several maps


@pytest.fixture(scope="module")
def model():
    return build_model("small", 5, rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def traced(model, sample):
    return trace(model, sample.image, sample.boxes, sample.labels, class_names=ShapesDataset.class_names)


def test_source_slices_cover_the_priors_in_order(model):
    slices = source_slices(model)
    assert [s[0] for s in slices] == model.source_names
    assert slices[0][1] == 0 and slices[-1][2] == model.num_priors
    assert all(a[2] == b[1] for a, b in itertools.pairwise(slices))
    # Every map's rows hold its own default boxes: on a map of side f with step S/f the centres are
    # (j + 0.5) / f (the small model's steps are 128 / f).
    for (name, start, stop), f in zip(slices, model.source_sizes, strict=True):
        cx = np.unique(np.round(model.priors_cxcywh[start:stop, 0] * f - 0.5, 9))
        assert np.array_equal(cx, np.arange(f)), name


def test_trace_shapes_and_counts(traced, model, sample):
    t = traced
    p, m = model.num_priors, model.num_classes
    assert t.x.shape == (3, 128, 128) and t.x.dtype == np.float32
    assert t.loc.shape == (p, 4) and t.conf.shape == (p, m) and t.probs.shape == (p, m)
    np.testing.assert_allclose(t.probs.sum(axis=1), 1.0, rtol=1e-6)
    assert sum(mp.num_boxes for mp in t.maps) == p == len(t.priors_cxcywh)
    assert [mp.max_object_prob.shape for mp in t.maps] == [(f, f) for f in model.source_sizes]
    g = len(sample.labels)
    assert t.ious.shape == (g, p) and t.gt_xyxy.shape == (g, 4)
    assert sum(len(mp.positives) for mp in t.maps) == len(t.positives) == len(t.positive_gt) == len(t.loc_t)
    assert len({len(mp.positives) > 0 for mp in t.maps}) == 2   # some maps match, some do not
    # every positive carries the label of its ground truth, and overlaps it (bipartite or IoU >= 0.5)
    assert np.array_equal(t.target_labels[t.positives], t.gt_labels[t.positive_gt])
    assert np.all(t.ious[t.positive_gt, t.positives] > 0)
    # each ground truth got at least its best default box (bipartite matching)
    for j in range(g):
        assert np.argmax(t.ious[j]) in t.positives[t.positive_gt == j] or t.ious[j].max() < 0.5


def test_trace_matches_model_targets_and_the_loss(traced, model, sample):
    t = traced
    x, gt, labels = EvalTransform(128, model.input_mean, model.input_std)(sample.image, sample.boxes, sample.labels)
    loc_t, labels_t = model.targets([gt], [labels])
    assert np.array_equal(np.flatnonzero(labels_t[0] > 0), t.positives)
    np.testing.assert_array_equal(t.loc_t, loc_t[0][t.positives])
    other = build_model("small", 5, rng=np.random.default_rng(0))
    loc, conf = other.forward(x[None])
    np.testing.assert_array_equal(loc[0], t.loc)
    parts = MultiBoxLoss().forward(loc, conf, loc_t, labels_t)
    assert parts == t.loss
    assert t.loss.num_pos == len(t.positives) and t.num_negatives == 3 * len(t.positives)
    assert t.loss_after.total < t.loss.total     # one SGD step on this image lowers its loss
    assert t.grad_norms["conf.conv4"] > 0 and set(t.grad_norms) == {
        name.rsplit(".", 1)[0] for name, _, _ in model.named_parameters()}


def test_trace_leaves_the_callers_model_alone(sample):
    m = build_model("small", 5, rng=np.random.default_rng(3))
    m.zero_grad()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    trace(m, sample.image, sample.boxes, sample.labels)
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(not np.any(g) for _, _, g in m.named_parameters())


def test_detections_come_from_the_candidates(traced):
    c, d = traced.candidates, traced.detections
    assert len(d["scores"]) <= len(c["scores"])
    assert np.all(c["scores"] > traced.score_threshold)
    # every detection is one of the candidates (same class, same score), in pixels inside the image
    pairs = set(zip(c["labels"].tolist(), np.round(c["scores"], 12).tolist(), strict=True))
    assert all((lab, round(s, 12)) in pairs for lab, s in zip(d["labels"].tolist(), d["scores"].tolist(), strict=True))
    assert np.all(d["boxes_px"] >= 0) and np.all(d["boxes_px"] <= 128)
    assert np.all(np.diff(d["scores"]) <= 0)


def test_trace_without_ground_truth(model, sample):
    t = trace(model, sample.image[:100, :90])          # any size; no boxes: no training half
    assert t.x.shape == (3, 128, 128) and t.positives is None and t.loss is None
    assert len(t.detections["scores"]) > 0 and t.detections["boxes_px"][:, 2].max() <= 90
    assert "loss" not in format_trace(t)


def test_trace_with_an_empty_ground_truth(model, sample):
    t = trace(model, sample.image, np.zeros((0, 4)), np.zeros(0, np.int64))
    assert len(t.positives) == 0 and t.loss.total == 0 and t.num_negatives == 0
    assert t.loss_after.total == 0 and all(v == 0 for v in t.grad_norms.values())


def test_trace_rejects_bad_input(model, sample):
    with pytest.raises(ValueError, match="image"):
        trace(model, sample.image.astype(np.float32))
    with pytest.raises(ValueError, match="boxes_px and labels"):
        trace(model, sample.image, sample.boxes)
    with pytest.raises(ValueError, match="labels"):
        trace(model, sample.image, sample.boxes, np.full(len(sample.labels), 7))


def test_draw_writes_a_png(traced, tmp_path):
    path = draw(traced, tmp_path / "sub" / "trace.png", title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 10_000


def _write_png(path, image):
    from PIL import Image

    Image.fromarray(image).save(path)
    return str(path)


def test_command_untrained_and_checkpoint(sample, model, tmp_path, capsys):
    img = _write_png(tmp_path / "shapes.png", sample.image)
    out = tmp_path / "a.png"
    assert main([img, "--box", "10,10,50,50,circle", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "UNTRAINED" in text and "one SGD step" in text and out.exists()
    ckpt = save_model(tmp_path / "m.npz", model, {"class_names": list(ShapesDataset.class_names)})
    out2 = tmp_path / "b.png"
    assert main(["--checkpoint", str(ckpt), img, "--out", str(out2)]) == 0
    text = capsys.readouterr().out
    assert "UNTRAINED" not in text and out2.exists()


@pytest.mark.parametrize("case", ["missing image", "unreadable image", "missing checkpoint", "bad box"])
def test_command_errors_are_one_line(case, sample, tmp_path, capsys):
    good = _write_png(tmp_path / "ok.png", sample.image)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    argv = {"missing image": [str(tmp_path / "nope.png")],
            "unreadable image": [str(bad)],
            "missing checkpoint": ["--checkpoint", str(tmp_path / "none.npz"), good],
            "bad box": [good, "--box", "1,2,3"]}[case]
    assert main(argv + ["--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minissd.explain: error: ") and err.count("\n") == 1, err
    name = {"missing image": "nope.png", "unreadable image": "bad.png", "missing checkpoint": "none.npz",
            "bad box": "--box"}[case]
    assert name in err
    assert not (tmp_path / "o.png").exists()


def test_command_help_and_exit_code_as_a_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minissd.explain", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "--checkpoint" in r.stdout and "--box" in r.stdout
    r = subprocess.run([sys.executable, "-m", "minissd.explain", str(tmp_path / "missing.jpg")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "missing.jpg" in r.stderr


def test_command_without_a_gpu_says_so_in_one_line(sample, tmp_path, capsys):
    from minissd.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present")
    img = _write_png(tmp_path / "ok.png", sample.image)
    assert main([img, "--device", "cuda", "--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minissd.explain: error: ") and err.count("\n") == 1, err

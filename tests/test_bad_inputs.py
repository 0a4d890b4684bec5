"""The bad-input corpus (tests/bad_inputs/ plus files generated here): datasets, images, checkpoints and
options a user gets wrong. One parametrised test runs each through its command and asserts: a non-zero
exit, exactly one error line naming the file or option, no traceback, and a run directory left intact
(every file still there, byte for byte, and no temporary file).
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from minissd import detect, evaluate, train
from minissd.checkpoint import load_checkpoint, save_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "bad_inputs")
TINY = ["--train-limit", "4", "--batch-size", "2", "--val-dataset", "none", "--test-dataset", "none",
        "--eval-every", "0", "--warmup", "1", "--lr", "0.01", "--progress", "none", "--max-minutes", "0",
        "--num-workers", "0"]
COMMANDS = {"train": train.main, "evaluate": evaluate.main, "detect": detect.main}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny finished run (1 iteration): its last.npz is the checkpoint the cases start from."""
    out = str(tmp_path_factory.mktemp("bad") / "run")
    assert train.main([*TINY, "--iterations", "1", "--out", out]) == 0
    return out


def _image(path, size=(40, 30)):
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _voc(root, xml_name=None, list_bytes=None, truncate=False, n=4):
    """A VOCdevkit/VOC2007 tree of n images; xml_name: a corpus annotation for all of them."""
    voc = os.path.join(root, "VOCdevkit", "VOC2007")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    ids = [f"{i:06d}" for i in range(n)]
    for image_id in ids:
        if xml_name is None:
            xml = open(os.path.join(CORPUS, "unknown_class.xml")).read().replace("unicorn", "dog")
        else:
            xml = open(os.path.join(CORPUS, xml_name)).read()
        with open(os.path.join(voc, "Annotations", image_id + ".xml"), "w") as f:
            f.write(xml.replace("IMAGE", image_id))
        _image(os.path.join(voc, "JPEGImages", image_id + ".jpg"))
    if truncate:   # the first image cut in the middle of its data
        path = os.path.join(voc, "JPEGImages", ids[0] + ".jpg")
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with open(os.path.join(voc, "ImageSets", "Main", "trainval.txt"), "wb") as f:
        f.write(list_bytes if list_bytes is not None else "".join(i + "\n" for i in ids).encode())
    return voc


def _short_class_names(run_dir, tmp):
    arrays, meta = load_checkpoint(os.path.join(run_dir, "last.npz"))
    meta["class_names"] = meta["class_names"][:2]
    return save_checkpoint(os.path.join(tmp, "short_names.npz"), arrays, meta)


def _pickled(tmp):
    path = os.path.join(tmp, "pickled.npz")
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    return path


def _random_bytes(tmp):
    path = os.path.join(tmp, "random.npz")
    open(path, "wb").write(b"PK\x03\x04" + np.random.default_rng(1).bytes(2000))
    return path


def _truncated_png(tmp):
    path = _image(os.path.join(tmp, "cut.png"), (64, 48))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return path


def _mode_i_negative(tmp):
    path = os.path.join(tmp, "negative.tif")
    Image.fromarray(np.full((8, 8), -5, np.int32), mode="I").save(path)
    return path


def _existing_file(tmp):
    path = os.path.join(tmp, "a_file")
    open(path, "w").write("x\n")
    return path


def _ckpt(run_dir):
    return os.path.join(run_dir, "last.npz")


def _run_copy(run_dir, tmp, damage=None):
    """A copy of the run directory, its last.npz replaced by ``damage`` bytes (if given)."""
    copy = os.path.join(tmp, "runcopy")
    shutil.copytree(run_dir, copy)
    if damage is not None:
        open(os.path.join(copy, "last.npz"), "wb").write(damage)
    return copy


# (id, command, argv(run_dir, tmp) -> list, what the one error line must name)
CASES = [
    # checkpoints
    ("ckpt-text", "evaluate", lambda r, t: ["--checkpoint", os.path.join(CORPUS, "text.npz")], "text.npz"),
    ("ckpt-random", "evaluate", lambda r, t: ["--checkpoint", _random_bytes(t)], "random.npz"),
    ("ckpt-pickled", "detect", lambda r, t: ["--checkpoint", _pickled(t), _image(os.path.join(t, "a.png"))],
     "pickled.npz"),
    ("ckpt-missing", "evaluate", lambda r, t: ["--checkpoint", os.path.join(t, "nope.npz")], "nope.npz"),
    ("ckpt-short-class-names", "detect",
     lambda r, t: ["--checkpoint", _short_class_names(r, t), _image(os.path.join(t, "a.png")),
                   "--out", os.path.join(t, "d")], "short_names.npz"),
    ("resume-damaged-last", "train", lambda r, t: ["--resume", _run_copy(r, t, b"\0" * 100)], "last.npz"),
    # images
    ("image-truncated", "detect",
     lambda r, t: ["--checkpoint", _ckpt(r), _truncated_png(t), "--out", os.path.join(t, "d")], "cut.png"),
    ("image-mode-I-negative", "detect",
     lambda r, t: ["--checkpoint", _ckpt(r), _mode_i_negative(t), "--out", os.path.join(t, "d")], "mode I"),
    ("image-text", "detect",
     lambda r, t: ["--checkpoint", _ckpt(r), os.path.join(CORPUS, "README.md"), "--out", os.path.join(t, "d")],
     "README.md"),
    # options
    ("seed-negative", "train", lambda r, t: [*TINY, "--seed", "-1", "--out", os.path.join(t, "o")], "--seed"),
    ("max-minutes-nan", "train", lambda r, t: [*TINY, "--max-minutes", "nan", "--out", os.path.join(t, "o")],
     "--max-minutes"),
    ("lr-inf", "train", lambda r, t: [*TINY, "--lr", "inf", "--out", os.path.join(t, "o")], "--lr"),
    ("weight-decay-nan", "train", lambda r, t: [*TINY, "--weight-decay", "nan", "--out", os.path.join(t, "o")],
     "--weight-decay"),
    ("train-out-is-a-file", "train", lambda r, t: [*TINY, "--out", _existing_file(t)], "--out"),
    ("resume-a-file", "train", lambda r, t: ["--resume", _existing_file(t)], "--resume"),
    ("score-threshold-2", "evaluate", lambda r, t: ["--checkpoint", _ckpt(r), "--score-threshold", "2"],
     "--score-threshold"),
    ("json-into-missing-dir", "evaluate",
     lambda r, t: ["--checkpoint", _ckpt(r), "--json", os.path.join(t, "missing", "m.json")], "--json"),
    ("detect-out-is-a-file", "detect",
     lambda r, t: ["--checkpoint", _ckpt(r), _image(os.path.join(t, "a.png")), "--out", _existing_file(t)],
     "--out"),
    ("detect-threshold-nan", "detect",
     lambda r, t: ["--checkpoint", _ckpt(r), _image(os.path.join(t, "a.png")), "--threshold", "nan"],
     "--threshold"),
    # datasets
    ("voc-list-not-utf8", "train",
     lambda r, t: [*TINY, "--dataset", "voc:" + _voc(t, list_bytes=b"00\xff0001\n"), "--out",
                   os.path.join(t, "o")], "trainval.txt"),
    ("voc-empty-split", "train",
     lambda r, t: [*TINY, "--dataset", "voc:" + _voc(t, list_bytes=b""), "--out", os.path.join(t, "o")],
     "no images"),
    ("voc-no-objects-train", "train",
     lambda r, t: [*TINY, "--dataset", "voc:" + _voc(t, "no_objects.xml"), "--out", os.path.join(t, "o")],
     "no objects"),
    ("voc-no-objects-evaluate", "evaluate",
     lambda r, t: ["--checkpoint", _voc_checkpoint(r, t), "--dataset",
                   "voc:" + _voc(t, "no_objects.xml") + ":trainval"],
     "mAP is"),
    ("voc-unknown-class", "train",
     lambda r, t: [*TINY, "--dataset", "voc:" + _voc(t, "unknown_class.xml"), "--out", os.path.join(t, "o")],
     "classes.txt"),
    ("voc-truncated-jpeg", "train",
     lambda r, t: [*TINY, "--dataset", "voc:" + _voc(t, truncate=True), "--iterations", "2",
                   "--out", os.path.join(t, "o")], "000000.jpg"),
]


def _voc_checkpoint(run_dir, tmp):
    """The tiny run's weights relabelled with the 20 VOC classes (a model for voc: data)."""
    from minissd.data import VOC_CLASSES
    from minissd.model import build_model, save_model

    model = build_model("small", len(VOC_CLASSES) + 1, rng=np.random.default_rng(0))
    return save_model(os.path.join(tmp, "voc.npz"), model, {"class_names": list(VOC_CLASSES)})


def _snapshot(directory):
    if directory is None or not os.path.isdir(directory):
        return {}
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            out[name] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_loses_nothing(case, run_dir, tmp_path, capsys):
    name, command, make_argv, needle = case
    before_run = _snapshot(run_dir)
    argv = make_argv(run_dir, str(tmp_path))
    resume_dir = argv[argv.index("--resume") + 1] if "--resume" in argv else None
    before_resume = _snapshot(resume_dir)
    capsys.readouterr()
    code = COMMANDS[command](argv)
    err = capsys.readouterr().err
    assert code not in (0, None), f"{name}: exit {code}\n{err}"
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, f"{name}: expected one error line, got:\n{err}"
    assert needle in errors[0], f"{name}: {needle!r} not in {errors[0]!r}"
    assert "allow_pickle" not in err
    # nothing lost or half-written: the runs' files are all there, unchanged, and no temporary file
    assert _snapshot(run_dir) == before_run
    if resume_dir is not None:
        assert _snapshot(resume_dir) == before_resume
    for directory in (run_dir, resume_dir, str(tmp_path / "o")):
        if directory and os.path.isdir(directory):
            assert not [f for f in os.listdir(directory) if f.startswith(".tmp-")], directory


def test_unreadable_training_image_saves_the_state_and_skip_unreadable_resumes(tmp_path, capsys):
    # The truncated JPEG stops training with the state saved; --resume --skip-unreadable continues from it,
    # counts the image, and reports it in results.json.
    voc = _voc(str(tmp_path), truncate=True)
    out = str(tmp_path / "o")
    argv = [*TINY, "--dataset", "voc:" + voc, "--iterations", "3", "--out", out]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "--skip-unreadable" in err and "000000.jpg" in err
    _, meta = load_checkpoint(os.path.join(out, "last.npz"))
    stopped_at = meta["iteration"]
    assert train.main(["--resume", out, "--skip-unreadable", "--progress", "none"]) == 0
    _, meta = load_checkpoint(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 3 and stopped_at < 3
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["unreadable"]["train"]["unreadable"] == 1
    assert "000000.jpg" in results["unreadable"]["train"]["files"][0]

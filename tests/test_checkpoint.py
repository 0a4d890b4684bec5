import os

import numpy as np
import pytest

from minissd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_is_exact(tmp_path, rng):
    arrays = {"trunk.conv1.W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "optim/step": np.array(7, dtype=np.int64)}
    path = save_checkpoint(tmp_path / "a.npz", arrays, {"config": {"name": "small"}, "iteration": 3})
    back, meta = load_checkpoint(path)
    assert set(back) == set(arrays)
    for k in arrays:
        assert back[k].dtype == arrays[k].dtype
        np.testing.assert_array_equal(back[k], arrays[k])
    assert meta["iteration"] == 3 and meta["config"] == {"name": "small"}
    assert "minissd_version" in meta
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary file left behind


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "b.npz", {"x": np.ones(1000)}, {})
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_garbage_and_missing_files(tmp_path):
    bad = tmp_path / "c.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="c.npz"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "d.npz", {"x": np.zeros(3)}, {"v": 1})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(path, {"x": np.ones(3)}, {"v": object()})
    arrays, meta = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["x"], np.zeros(3))
    assert meta["v"] == 1
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)

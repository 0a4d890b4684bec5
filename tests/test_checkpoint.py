import os
import subprocess
import sys

import numpy as np
import pytest

from minissd.checkpoint import CheckpointError, clean_temp_files, load_checkpoint, save_checkpoint


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


# --- issue 16: file mode, temporary files, files that are not checkpoints --------------------------

@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = save_checkpoint(tmp_path / "m.npz", {"x": np.zeros(2)})
    assert os.stat(path).st_mode & 0o777 == mode  # mkstemp made every checkpoint 0o600
    (tmp_path / "other.json").write_text("{}")
    assert os.stat(tmp_path / "other.json").st_mode & 0o777 == mode  # like any other file of the run


def test_interrupted_save_removes_its_temporary_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.npz", {"x": np.zeros(3)}, {"v": 1})
    real_savez = np.savez

    def savez_then_interrupt(f, **payload):
        real_savez(f, **payload)  # the temporary file is complete ...
        assert len([n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]) == 1
        raise KeyboardInterrupt  # ... and Ctrl-C comes before the rename

    monkeypatch.setattr(np, "savez", savez_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": np.ones(3)}, {"v": 2})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last.npz"]
    arrays, meta = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["x"], np.zeros(3))
    assert meta["v"] == 1


def test_object_arrays_are_refused_when_saving(tmp_path):
    with pytest.raises(ValueError, match="'names'.*Python objects"):
        save_checkpoint(tmp_path / "o.npz", {"names": np.array(["a", None], dtype=object)})
    assert os.listdir(tmp_path) == []


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_clean_temp_files_removes_only_ours_and_only_stale(tmp_path):
    dead = _dead_pid()
    ours = [".tmp-k3j_x9a2.npz",  # what tempfile.mkstemp left (minissd <= 0.1)
            f".tmp-{dead}-0123456789abcdef.npz",  # its writer was killed
            f".tmp-{os.getpid()}-fedcba9876543210.json"]  # this process's: no write in progress now
    live_writer = ".tmp-1-0123456789abcdef.npz"  # pid 1 is alive: it may be writing it right now
    not_ours = ["last.npz", "tmp-k3j_x9a2.npz", ".tmp-1234567890.npz", ".tmp-notours", "notes.tmp",
                ".tmp-k3j_x9a2.npz.bak"]
    for name in ours + [live_writer] + not_ours:
        (tmp_path / name).write_bytes(b"x" * 10)
    (tmp_path / ".tmp-abcdefgh.npz").mkdir()  # a directory is never removed
    removed = clean_temp_files(tmp_path)
    assert sorted(removed) == sorted(str(tmp_path / n) for n in ours)
    assert sorted(os.listdir(tmp_path)) == sorted([live_writer, ".tmp-abcdefgh.npz"] + not_ours)
    assert clean_temp_files(tmp_path) == []
    assert clean_temp_files(tmp_path / "no-such-run") == []


def test_a_killed_save_is_cleaned_at_the_next_start(tmp_path):
    # A writer killed (-9) in the middle of its write leaves its temporary file; clean_temp_files removes it.
    code = ("import os, numpy as np, minissd.checkpoint as c\n"
            "def stop(f, **kw):\n    f.write(b'partial'); f.flush(); os._exit(9)\n"
            "np.savez = stop\n"
            f"c.save_checkpoint({str(tmp_path / 'last.npz')!r}, {{'x': np.zeros(3)}})\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == 9
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].startswith(".tmp-") and left[0].endswith(".npz")
    assert clean_temp_files(tmp_path) == [str(tmp_path / left[0])]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, content, reason", [
    ("random.npz", bytes(np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8)), "not an .npz"),
    ("text.npz", b"hello, this is text\n", "not an .npz"),
    ("empty.npz", b"", "is empty"),
    ("single.npz", None, "single .npy array"),
])
def test_files_that_are_not_checkpoints_are_named_without_pickle_advice(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert name in message and "pickle" not in message.lower()


def test_object_arrays_in_a_foreign_npz_get_no_unsafe_advice(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="foreign.npz.*Python objects") as info:
        load_checkpoint(path)
    assert "allow_pickle" not in str(info.value) and "unsafe" not in str(info.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("compressed", [False, True])
def test_damaged_archives_only_ever_raise_checkpoint_error(tmp_path, compressed):
    # Bytes flipped or cut anywhere: the answer is the arrays (a flip in a byte nothing checks) or a
    # CheckpointError naming the file -- never zlib.error, TokenError, NotImplementedError, ... (seen before).
    source = tmp_path / "src.npz"
    payload = {"a": np.arange(1000.0), "__meta__": np.frombuffer(b'{"iteration": 1}', np.uint8)}
    (np.savez_compressed if compressed else np.savez)(source, **payload)
    good = source.read_bytes()
    rng = np.random.default_rng(16)
    path = tmp_path / "damaged.npz"
    errors = 0
    for trial in range(300):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if trial % 5 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        path.write_bytes(bytes(data))
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            errors += 1
            assert "damaged.npz" in str(err) and "allow_pickle" not in str(err)
    assert errors > 250

"""Atomic writes of JSON and text files, their file mode, and reading JSON with the file named."""
import json
import os

import pytest

from minissd import fileio
from minissd.fileio import atomic_write, clean_temp_files, is_temp_file, read_json, write_json_atomic, write_text_atomic


def test_json_round_trip_and_nothing_else_left(tmp_path):
    obj = {"lr": 0.001, "classes": ["cat", "dog"], "nested": {"k": [1, 2]}, "mAP": float("nan")}
    path = write_json_atomic(tmp_path / "run" / "config.json", obj)  # the directory is created
    assert path == str(tmp_path / "run" / "config.json")
    text = open(path, encoding="utf-8").read()
    assert text.endswith("}\n") and '\n  "lr": 0.001' in text  # indented, one final newline
    back = read_json(path)
    assert back["classes"] == ["cat", "dog"] and back["nested"] == {"k": [1, 2]} and back["mAP"] != back["mAP"]
    assert os.listdir(tmp_path / "run") == ["config.json"]


def test_rewrite_replaces_whole_file(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": list(range(1000))})
    write_json_atomic(path, {"b": 1})
    assert json.loads(path.read_text()) == {"b": 1}
    write_text_atomic(tmp_path / "notes.txt", "héllo\n")
    assert (tmp_path / "notes.txt").read_bytes() == "héllo\n".encode()


def test_not_serialisable_fails_before_touching_the_disk(tmp_path):
    path = tmp_path / "config.json"
    write_json_atomic(path, {"ok": True})
    with pytest.raises(ValueError, match=r"config\.json: cannot write as JSON"):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_interrupted_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, exc):
    path = tmp_path / "log.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(exc), atomic_write(path, "w") as f:
        f.write("new, half")
        assert len(os.listdir(tmp_path)) == 2  # old file + our temporary
        raise exc()
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["log.txt"]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o640


def test_temporary_names_are_ours_and_cleaned(tmp_path, monkeypatch):
    names = []
    real = fileio._temp_name
    monkeypatch.setattr(fileio, "_temp_name", lambda suffix: names.append(real(suffix)) or names[-1])
    write_json_atomic(tmp_path / "config.json", {})
    write_text_atomic(tmp_path / "metrics.jsonl", "")
    write_text_atomic(tmp_path / "README", "")
    assert [n.rsplit(".", 1)[-1] if n.count(".") > 1 else "" for n in names] == ["json", "jsonl", ""]
    assert all(is_temp_file(n) and n.startswith(f".tmp-{os.getpid()}-") for n in names)
    for n in names:  # as if killed before the rename
        (tmp_path / n).write_text("partial")
    assert sorted(clean_temp_files(tmp_path)) == sorted(str(tmp_path / n) for n in names)
    assert sorted(os.listdir(tmp_path)) == ["README", "config.json", "metrics.jsonl"]


def test_refuses_a_directory_as_target(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d\.json"):
        write_json_atomic(tmp_path / "d.json", {})
    assert os.listdir(tmp_path) == ["d.json"]


def test_read_json_names_the_file_and_the_place(tmp_path):
    damaged = tmp_path / "config.json"
    damaged.write_text('{\n  "lr": 0.001,\n  "iterations": \n')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON \(line 4, column 1"):
        read_json(damaged)
    latin1 = tmp_path / "latin.json"
    latin1.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.json: not UTF-8 text \(byte 0xe9 at offset 13\)"):
        read_json(latin1)
    with pytest.raises(ValueError, match=r"gone\.json: file does not exist"):
        read_json(tmp_path / "gone.json")

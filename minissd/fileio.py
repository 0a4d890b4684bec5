"""Files written atomically, and the cleanup of what an interrupted write leaves behind.

Every file minissd writes into a run directory (checkpoints, config.json, results.json, logs that are
rewritten whole) goes through `atomic_write`: the bytes go to a hidden temporary file in the same
directory, named ``.tmp-<pid>-<random>.<ext>``, which is flushed to disk (fsync) and then renamed
over the target with ``os.replace``. A reader therefore sees either the old file or the new one, never
a half-written one, whatever happens to the process (exception, Ctrl-C, SIGTERM, kill -9, power loss).

Two more promises:

* The temporary file is removed on every exit path Python sees (an exception, KeyboardInterrupt,
  SystemExit). Only kill -9 or a crash of the machine can leave one behind; `clean_temp_files`, run
  when a command starts (and when it ends), removes those: files of exactly our temporary pattern
  whose writer process is gone.
* The new file gets the mode an ordinary ``open(path, "w")`` would give it: 0o666 minus the umask,
  like every other file of the run directory (``tempfile.mkstemp`` would make it 0o600).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets

TEMP_PREFIX = ".tmp-"
# ".tmp-<pid>-<16 hex>.<ext>" (written by this module), or ".tmp-<8 of [a-z0-9_]>.npz" (what
# tempfile.mkstemp made in minissd <= 0.1, before this module existed). Nothing else is ever removed.
_TEMP_RE = re.compile(r"^\.tmp-(?:(?P<pid>\d+)-[0-9a-f]{16}|[a-z0-9_]{8})(?:\.[A-Za-z0-9]{1,8})?$")


def _temp_name(suffix: str) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{suffix}"


def is_temp_file(name: str) -> bool:
    """Whether the file name ``name`` (no directory) is one of our temporary files."""
    return _TEMP_RE.match(name) is not None


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return False  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def clean_temp_files(directory) -> list[str]:
    """Remove the temporary files an interrupted write left in ``directory``; returns their paths.

    Only names of our own pattern are touched (see `is_temp_file`); a file whose name carries the id of
    another process that is still running is kept, since that process may be writing it right now
    (e.g. ``evaluate --json`` into a run directory while the run trains). Files of the calling process
    are removed: call this when no write of this process is in progress (at start and at exit). A
    directory that does not exist has nothing to clean.
    """
    directory = os.fspath(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    me = os.getpid()
    for name in sorted(names):
        match = _TEMP_RE.match(name)
        if match is None:
            continue
        pid = match.group("pid")
        if pid is not None and int(pid) != me and _process_alive(int(pid)):
            continue
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue  # someone else cleaned it first
        removed.append(path)
    return removed


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); best effort where directories cannot be opened."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """``with atomic_write(path) as f: f.write(...)`` -- the file appears at ``path`` complete or not at all.

    ``mode`` is "wb" or "w" (text, UTF-8 unless ``encoding`` says otherwise). The directory is created
    if missing. On any exception in the block (KeyboardInterrupt included) the temporary file is
    removed, the target is left as it was, and the exception propagates. Returns (via the context) a
    file object; the final path is ``os.fspath(path)``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory")
    suffix = os.path.splitext(path)[1]
    if not re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix):
        suffix = ""
    # O_EXCL with mode 0o666: the kernel applies the umask, as for any file the run writes.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, _temp_name(suffix))
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 64 random bits
        raise FileExistsError(f"{directory}: cannot create a temporary file")
    done = False
    try:
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
        _fsync_directory(directory)
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes_atomic(path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (see `atomic_write`); returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically (see `atomic_write`); returns the path."""
    data = text.encode(encoding)  # encoding errors surface before anything touches the disk
    return write_bytes_atomic(path, data)


def write_json_atomic(path, obj, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically; returns the path.

    ValueError, before anything touches the disk, if ``obj`` is not JSON-serialisable. NaN and
    infinities are written as Python's json module writes them (``NaN``, ``Infinity``), which it reads back.
    """
    try:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{os.fspath(path)}: cannot write as JSON: {err}") from err
    return write_text_atomic(path, text + "\n")


def read_json(path):
    """Read a JSON file; ValueError naming the file (and line and column) when it is missing, not
    UTF-8 or not valid JSON."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as err:
        raise ValueError(f"{path}: file does not exist") from err
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err

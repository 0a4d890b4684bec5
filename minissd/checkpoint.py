"""Checkpoints: named arrays in one .npz plus JSON metadata, written atomically.

A checkpoint is ``{name: array}`` (model parameters under their dotted names, optimiser state
under ``optim/...`` and so on) and a JSON-able ``meta`` dict (config, class names, minissd
version, iteration, RNG state). It is written to a temporary file in the same directory, flushed
to disk and renamed over the target, so a crash or Ctrl-C never leaves a half-written file; the
temporary file is removed on every exit path Python sees, and `clean_temp_files` removes what a kill -9
left (see minissd/fileio.py). The file's mode follows the umask, like the rest of the run directory.
Loading never unpickles (``allow_pickle=False``), and a file that is not a minissd checkpoint is
reported as such, with its name.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import __version__
from .backend import to_cpu
from .fileio import atomic_write, clean_temp_files  # noqa: F401  (clean_temp_files: re-exported)

META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or does not fit the model."""


def save_checkpoint(path, arrays: dict, meta: dict | None = None) -> str:
    """Write ``arrays`` and ``meta`` to ``path`` atomically; returns the path.

    Arrays on the GPU are copied to the host. ``meta`` must be JSON-serialisable.
    """
    path = os.fspath(path)
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved for metadata")
    meta = dict(meta or {})
    meta.setdefault("minissd_version", __version__)
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {err}") from err
    payload = {name: np.asarray(to_cpu(a)) for name, a in arrays.items()}
    for name, a in payload.items():
        if a.dtype.hasobject:
            # np.savez would pickle it, and load_checkpoint (rightly) refuses pickles.
            raise ValueError(f"array {name!r}: dtype {a.dtype} holds Python objects; a checkpoint holds numbers only")
    payload[META_KEY] = np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8)

    with atomic_write(path, "wb") as f:
        np.savez(f, allow_pickle=False, **payload)
    return path


def load_checkpoint(path) -> tuple[dict, dict]:
    """Read ``(arrays, meta)`` from a file written by `save_checkpoint`.

    Raises CheckpointError with the path and the reason for a missing, truncated or corrupt file.
    """
    path = os.fspath(path)
    _check_is_npz(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as err:
        # numpy's own text for object arrays advises loading the file unsafely; never pass that on.
        if "pickle" in str(err):
            raise CheckpointError(f"checkpoint {path!r} holds Python objects (pickled data), which minissd "
                                  "never loads; it was not written by minissd") from None
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({type(err).__name__}: {err})") from err
    except Exception as err:  # noqa: BLE001 - a damaged archive fails in many ways (zlib.error, BadZipFile,
        # tokenize.TokenError from a mangled .npy header, NotImplementedError for a flipped flag bit, ...)
        raise CheckpointError(
            f"checkpoint {path!r} is truncated or corrupt ({type(err).__name__}: {err})"
        ) from err
    if META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path!r} has no metadata; it was not written by minissd")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path!r} has corrupt metadata: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path!r} has corrupt metadata: expected a JSON object")
    return arrays, meta


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an empty one starts with the second)
_NPY_MAGIC = b"\x93NUMPY"


def _check_is_npz(path: str) -> None:
    """CheckpointError naming ``path`` unless it is a readable file that starts like a zip archive.

    np.load itself would take a file of random bytes or text for a pickle and advise loading it
    unsafely; this check answers first, in our words.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({err.strerror or err})") from err
    if not head:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes); it was not written completely")
    if head.startswith(_NPY_MAGIC):
        raise CheckpointError(f"checkpoint {path!r} is a single .npy array, not a minissd checkpoint (.npz)")
    if not head.startswith(_ZIP_MAGIC):
        raise CheckpointError(f"checkpoint {path!r} is not a minissd checkpoint: not an .npz (zip) archive "
                              f"(it starts with {head[:4]!r})")

"""Checkpoints: named arrays in one .npz plus JSON metadata, written atomically.

A checkpoint is ``{name: array}`` (model parameters under their dotted names, optimiser state
under ``optim/...`` and so on) and a JSON-able ``meta`` dict (config, class names, minissd
version, iteration, RNG state). It is written to a temporary file in the same directory, flushed
to disk and renamed over the target, so a crash or Ctrl-C never leaves a half-written file.
Loading never unpickles (``allow_pickle=False``).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from . import __version__
from .backend import to_cpu

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
    except TypeError as err:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {err}") from err
    payload = {name: to_cpu(a) for name, a in arrays.items()}
    payload[META_KEY] = np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_checkpoint(path) -> tuple[dict, dict]:
    """Read ``(arrays, meta)`` from a file written by `save_checkpoint`.

    Raises CheckpointError with the path and the reason for a missing, truncated or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path!r} is truncated or corrupt ({type(err).__name__}: {err})"
        ) from err
    if META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path!r} has no metadata; it was not written by minissd")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {path!r} has corrupt metadata: {err}") from err
    return arrays, meta

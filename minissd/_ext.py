"""Import a compiled Cython kernel module with an error that says how to build it."""
from __future__ import annotations

import importlib

BUILD_HINT = (
    "minissd's compiled kernels are not built in this checkout. From the repository root run "
    "`pip install -e .` (or `python setup.py build_ext --inplace`); gcc and the Python headers are needed."
)


def load_extension(name: str):
    """Import ``minissd.<name>`` (a module built from ``csrc/<name without _>.pyx``)."""
    try:
        return importlib.import_module(f"minissd.{name}")
    except ImportError as err:
        raise ImportError(f"cannot import minissd.{name}: {err}. {BUILD_HINT}") from err

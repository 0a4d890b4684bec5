"""NumPy or CuPy: the array decides.

This is the only module that imports CuPy. Every numerical function in minissd asks
``xp = get_array_module(x)`` and uses ``xp`` for its arithmetic, so the same code runs on
NumPy arrays (CPU) and CuPy arrays (GPU). Host <-> device copies are explicit (`to_cpu`,
`to_gpu`, `to_device`) and happen at the edges: the data loader and the kernels that run on
the host.

Device selection for the command-line tools: ``--device cpu|cuda`` or the environment
variable ``MINISSD_DEVICE``; `resolve_device` turns either into ``"cpu"`` or ``"cuda"``
and fails with a message that says what is missing when CUDA cannot be used.

Why CUDA is unusable is kept, not swallowed: `gpu_unavailable_reason` says it in one line. With the
environment variable ``MINISSD_REQUIRE_GPU=1`` (the GPU machine's test run), `require_gpu_if_asked`
raises instead, and the test suite turns every skipped GPU test into a failure (tests/conftest.py).
"""
from __future__ import annotations

import os

import numpy as np

try:  # CuPy is optional: `pip install minissd[cuda12]` or `minissd[cuda13]`.
    import cupy as _cupy
except Exception as _err:  # ImportError, or a CUDA library that fails to load
    _cupy = None
    _CUPY_IMPORT_ERROR = f"{type(_err).__name__}: {_err}"
else:
    _CUPY_IMPORT_ERROR = None

DEVICES = ("cpu", "cuda")
ENV_VAR = "MINISSD_DEVICE"
REQUIRE_GPU_ENV = "MINISSD_REQUIRE_GPU"


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CuPy, no GPU, unknown name)."""


def cupy_module():
    """The ``cupy`` module, or None when CuPy is not installed or does not load."""
    return _cupy


def gpu_unavailable_reason() -> str | None:
    """None when CuPy imports and sees a CUDA device, else one line that says why not."""
    if _cupy is None:
        return f"CuPy does not import ({_CUPY_IMPORT_ERROR})"
    try:
        count = _cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # no driver, no device, a CUDA library that fails to load
        first = (str(err).strip().splitlines() or [""])[0]
        return f"CuPy finds no CUDA device ({type(err).__name__}: {first})"
    if count < 1:
        return "CuPy finds no CUDA device (getDeviceCount() is 0)"
    return None


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return gpu_unavailable_reason() is None


def gpu_required() -> bool:
    """True when ``$MINISSD_REQUIRE_GPU`` is set to anything but "", "0", "false", "no" or "off"."""
    return os.environ.get(REQUIRE_GPU_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def require_gpu_if_asked() -> None:
    """Raise DeviceError (saying why) when ``$MINISSD_REQUIRE_GPU`` is set and CUDA is unusable."""
    if gpu_required():
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise DeviceError(f"{REQUIRE_GPU_ENV} is set but {reason}")


def is_gpu_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy``.

    Non-array arguments (floats, None) are ignored, so ``get_array_module(x, None)`` works.
    """
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def to_cpu(x):
    """A NumPy array holding ``x`` (a copy from the GPU for CuPy arrays; ``x`` itself otherwise)."""
    if is_gpu_array(x):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def to_gpu(x):
    """A CuPy array holding ``x``. Raises DeviceError when CUDA is unavailable."""
    _require_cuda()
    return _cupy.asarray(x)


def to_device(x, device: str):
    """``x`` as an array on ``device`` ("cpu" or "cuda")."""
    device = _check_device_name(device)
    return to_gpu(x) if device == "cuda" else to_cpu(x)


def xp_for(device: str):
    """The array module for a device name: numpy for "cpu", cupy for "cuda"."""
    device = _check_device_name(device)
    if device == "cuda":
        _require_cuda()
        return _cupy
    return np


def device_of(x) -> str:
    """"cuda" for a CuPy array, "cpu" otherwise."""
    return "cuda" if is_gpu_array(x) else "cpu"


def resolve_device(requested: str | None = None) -> str:
    """The device to run on: ``requested``, else ``$MINISSD_DEVICE``, else "cpu".

    "cuda" is checked here, once, so a missing CuPy or GPU is reported before any work starts.
    """
    name = requested if requested else os.environ.get(ENV_VAR, "") or "cpu"
    name = _check_device_name(name, source="--device" if requested else ENV_VAR)
    if name == "cuda":
        _require_cuda()
    return name


def synchronize(x=None) -> None:
    """Wait for queued GPU work (for timing); a no-op on the CPU."""
    if _cupy is not None and (x is None or is_gpu_array(x)):
        # No try/except: an asynchronous kernel fault is reported here, by the sync that finds it,
        # not later by some unrelated call.
        _cupy.cuda.get_current_stream().synchronize()


def _check_device_name(name: str, source: str = "device") -> str:
    key = str(name).strip().lower()
    if key == "gpu":
        key = "cuda"
    if key not in DEVICES:
        raise DeviceError(f"{source}={name!r} is not a device; choose one of {', '.join(DEVICES)}")
    return key


def _require_cuda() -> None:
    if _cupy is None:
        raise DeviceError(
            "device 'cuda' needs CuPy, which is not importable "
            f"({_CUPY_IMPORT_ERROR}). Install the wheel for your CUDA version: "
            "pip install 'minissd[cuda12]' or 'minissd[cuda13]'; or use --device cpu."
        )
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise DeviceError(
            f"device 'cuda' was requested but {reason}; "
            "check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu."
        )

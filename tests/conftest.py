"""Shared fixtures: ``rng`` (seeded Generator) and ``xp`` (numpy, plus cupy when a GPU is present)."""
import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from minissd import backend  # noqa: E402

HAS_GPU = backend.gpu_available()

try:
    import torch  # noqa: F401

    HAS_TORCH = True
except Exception:
    HAS_TORCH = False

# Cross-check tests use this marker; CI installs torch so they run there, and a run without torch
# says why each one skipped.
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (the cross-check oracle) is not installed")
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA GPU")


@pytest.fixture
def rng():
    return np.random.default_rng(20161008)


XP_PARAMS = [pytest.param(np, id="numpy")]
if backend.cupy_module() is not None:
    XP_PARAMS.append(pytest.param(backend.cupy_module(), id="cupy",
                                  marks=[pytest.mark.gpu, gpu]))
else:
    XP_PARAMS.append(pytest.param(None, id="cupy", marks=[pytest.mark.gpu, pytest.mark.skip(
        reason="CuPy is not installed")]))


@pytest.fixture(params=XP_PARAMS)
def xp(request):
    """The array module under test: numpy always, cupy when CuPy and a GPU are present."""
    return request.param


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MINISSD_REQUIRE_TORCH") and not HAS_TORCH:
        raise pytest.UsageError("MINISSD_REQUIRE_TORCH is set but torch does not import")

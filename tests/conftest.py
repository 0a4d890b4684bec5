"""Shared fixtures, markers and switches of the test suite.

- ``rng`` (seeded Generator) and ``xp`` (numpy, plus cupy when a GPU is present).
- ``gpu``: skip marker for tests that need CuPy and a CUDA GPU; its reason says why the GPU is missing.
  Mark such tests ``@pytest.mark.gpu`` too, so that ``pytest -m gpu`` selects them.
- ``MINISSD_REQUIRE_GPU=1`` (scripts/gpu_check.sh sets it): a ``gpu``-marked test that skips, for any
  reason, is reported as a failure instead, so a CuPy that does not import or sees no device cannot pass
  for a green GPU run.
- hypothesis: one settings profile, loaded by default (derandomized, fixed example count, no deadline),
  so that CI runs the same examples every time; ``HYPOTHESIS_PROFILE=explore`` draws fresh random ones.
  Test modules import ``HealthCheck, example, given, settings, st`` from here: where hypothesis is not
  installed those are stand-ins under which each property test skips and every other test still runs.
"""
import contextlib
import importlib.util
import inspect
import os
import signal
import subprocess

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from minissd import backend

GPU_REASON = backend.gpu_unavailable_reason()
HAS_GPU = GPU_REASON is None

try:
    import torch  # noqa: F401

    HAS_TORCH = True
except Exception:
    HAS_TORCH = False

# Cross-check tests use this marker; CI installs torch so they run there, and a run without torch
# says why each one skipped.
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (the cross-check oracle) is not installed")
gpu = pytest.mark.skipif(not HAS_GPU, reason=f"needs CuPy and a CUDA GPU: {GPU_REASON}")


# -- hypothesis, or stand-ins where it is not installed -------------------------------------------------
try:
    from hypothesis import HealthCheck, example, given, settings  # re-exported to the test modules
    from hypothesis import strategies as st

    HAS_HYPOTHESIS = True
except ImportError:
    HAS_HYPOTHESIS = False

if HAS_HYPOTHESIS:
    # CI: the same examples on every run (derandomize; no example database), a fixed count where a
    # test does not set its own, and no per-example deadline (a shared CI core is slow at times).
    settings.register_profile("minissd", derandomize=True, database=None, max_examples=60, deadline=None)
    # Looking for new counterexamples by hand: HYPOTHESIS_PROFILE=explore python -m pytest ...
    settings.register_profile("explore", derandomize=False, max_examples=500, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minissd"))
else:
    class _Anything:
        """Accepts any attribute access or call (``st.integers(0, 5).map(f)``, ``HealthCheck.too_slow``)."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

    st = HealthCheck = _Anything()

    def settings(*args, **kwargs):
        return lambda f: f

    def example(*args, **kwargs):
        return lambda f: f

    def given(*args, **kwargs):
        """Replace the property test by one that skips; its other arguments (parametrize, fixtures) stay."""
        def decorate(f):
            params = list(inspect.signature(f).parameters.values())
            drawn = set(kwargs) | {p.name for p in params[len(params) - len(args):]} if args else set(kwargs)

            def skipped(*a, **k):
                pytest.skip("hypothesis is not installed")
            skipped.__name__, skipped.__qualname__ = f.__name__, f.__qualname__
            skipped.__module__, skipped.__doc__ = f.__module__, f.__doc__
            skipped.__signature__ = inspect.Signature([p for p in params if p.name not in drawn])
            return skipped
        return decorate


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def rng():
    return np.random.default_rng(20161008)


@contextlib.contextmanager
def threads_set_to(n: int):
    """minissd's CPU thread count set to ``n`` inside the block, the count before it restored after
    (``n = 1``: no pool at all, so no fork-join pool either)."""
    from minissd.nn import threads as threads_mod

    old = threads_mod.get_num_threads()
    threads_mod.set_num_threads(n)
    try:
        yield
    finally:
        threads_mod.set_num_threads(old)


@contextlib.contextmanager
def gemm_set_to(kind: str):
    """minissd's float32 GEMM set to ``kind`` ("blas" or "avx512", minissd.nn.threads.set_gemm) inside
    the block, the one before it restored after."""
    from minissd.nn import threads as threads_mod

    old = threads_mod.get_gemm()
    threads_mod.set_gemm(kind)
    try:
        yield
    finally:
        threads_mod.set_gemm(old)


def own_gemm_supported() -> bool:
    from minissd.nn.threads import cpu_kernels

    return cpu_kernels().own_sgemm_supported()


# Both GEMMs where the CPU runs the AVX-512 one; the BLAS alone elsewhere.
GEMM_KINDS = ["blas", pytest.param("avx512", marks=pytest.mark.skipif(
    not own_gemm_supported(), reason="the own GEMM needs AVX-512F; tests/test_sgemm.py checks its portable "
                                     "kernel on this CPU"))]


def _in_forked_child(check, what: str, timeout: float = 30.0) -> None:
    """Fork; the child runs ``check()`` (True: pass) and exits; the parent fails the test when the child
    fails, raises or hangs past ``timeout`` seconds (then it is killed). ``what`` names the hang."""
    import time

    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if check() else 1)
        except BaseException:
            os._exit(1)
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child hung on {what}")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.fixture
def in_forked_child():
    """`_in_forked_child`: run a check in a forked child process (needs os.fork)."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    return _in_forked_child


XP_PARAMS = [pytest.param(np, id="numpy")]
if backend.cupy_module() is not None:
    XP_PARAMS.append(pytest.param(backend.cupy_module(), id="cupy",
                                  marks=[pytest.mark.gpu, gpu]))
else:
    XP_PARAMS.append(pytest.param(None, id="cupy", marks=[pytest.mark.gpu, pytest.mark.skip(
        reason=f"needs CuPy and a CUDA GPU: {GPU_REASON}")]))


@pytest.fixture(params=XP_PARAMS)
def xp(request):
    """The array module under test: numpy always, cupy when CuPy and a GPU are present."""
    return request.param


# -- hooks -----------------------------------------------------------------------------------------
def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA GPU (skipped without one)")


def pytest_report_header(config):
    gpu_line = "available" if HAS_GPU else f"not available: {GPU_REASON}"
    required = f"; {backend.REQUIRE_GPU_ENV} is set: GPU skips fail" if backend.gpu_required() else ""
    hyp = "" if HAS_HYPOTHESIS else "; hypothesis not installed: property tests skip"
    return f"minissd: CUDA GPU {gpu_line}{required}{hyp}"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MINISSD_REQUIRE_TORCH") and not HAS_TORCH:
        raise pytest.UsageError("MINISSD_REQUIRE_TORCH is set but torch does not import")
    # .ci/run: the real-torchvision tests must run. Checked without importing it here (a test that runs
    # pytest in a subprocess with a module hidden must still collect); a torchvision test that skips
    # fails instead (pytest_runtest_makereport).
    if os.environ.get("MINISSD_REQUIRE_TORCHVISION") and importlib.util.find_spec("torchvision") is None:
        raise pytest.UsageError("MINISSD_REQUIRE_TORCHVISION is set but torchvision is not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under MINISSD_REQUIRE_GPU, a skipped ``gpu``-marked test fails (an error when it skipped at setup,
    as skip markers do), saying why it skipped."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is not None
            and backend.gpu_required()):
        longrepr = report.longrepr
        why = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        why = why.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"{backend.REQUIRE_GPU_ENV} is set but this GPU test skipped: {why}"
    elif report.skipped and not hasattr(report, "wasxfail") and os.environ.get("MINISSD_REQUIRE_TORCHVISION"):
        longrepr = report.longrepr
        why = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        if "torchvision" in why:
            report.outcome = "failed"
            report.longrepr = f"MINISSD_REQUIRE_TORCHVISION is set but this test skipped: {why}"


def run_mpi_job(cmd, env, timeout, what=None):
    """Run an ``mpiexec`` command line in its own process group: (returncode, stdout, stderr).

    A job still running at ``timeout`` seconds (a hung collective) is killed with its whole process
    group and the test fails with both streams, instead of hanging the suite.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what or ' '.join(map(str, cmd))} still running after {timeout} s (hung collective?)\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err

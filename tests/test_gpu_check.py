"""The GPU run's safety nets, checked on the CPU: MINISSD_REQUIRE_GPU turns GPU skips into failures,
scripts/gpu_check.sh stops in one line without a GPU, and a missing hypothesis only skips property tests.

Each check runs a child process (pytest on a small generated test file next to a copy of
tests/conftest.py, or the script itself), so what is checked is what a GPU machine would run.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minissd import backend

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

TINY = '''
import numpy as np
import pytest
from conftest import gpu


@gpu
@pytest.mark.gpu
def test_needs_a_gpu():
    import cupy
    assert int((cupy.arange(3) + 1).sum()) == 6


def test_runs_on_numpy_and_cupy(xp):
    assert int((xp.arange(3) + 1).sum()) == 6


def test_cpu_only():
    assert np.arange(3).sum() == 3
'''


def _pytest(tmp_path, source, *args, require=None, block_hypothesis=False):
    """Run pytest in a child process on ``source`` (written to tmp_path) beside a copy of our conftest."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_tiny.py").write_text(source)
    env = dict(os.environ)
    env.pop(backend.REQUIRE_GPU_ENV, None)
    env.pop("HYPOTHESIS_PROFILE", None)
    if require is not None:
        env[backend.REQUIRE_GPU_ENV] = require
    code = "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))"
    if block_hypothesis:
        code = BLOCK_HYPOTHESIS + code
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    cmd = [sys.executable, "-c", code, "-p", "no:cacheprovider", "-ra", "-q", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU: nothing skips here")
def test_gpu_tests_skip_with_the_reason_without_require_gpu(tmp_path):
    run = _pytest(tmp_path, TINY, "test_tiny.py")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "2 passed, 2 skipped" in out, out
    assert f"needs CuPy and a CUDA GPU: {backend.gpu_unavailable_reason()}" in out, out


def test_require_gpu_turns_gpu_skips_into_failures(tmp_path):
    run = _pytest(tmp_path, TINY, "test_tiny.py", require="1")
    out = run.stdout + run.stderr
    if backend.gpu_available():                          # on a GPU machine the same file simply passes
        assert run.returncode == 0 and "4 passed" in out, out
        return
    assert run.returncode == 1, out
    assert "2 passed, 2 errors" in out, out             # the two GPU tests fail at setup; numpy ones run
    assert f"MINISSD_REQUIRE_GPU is set but this GPU test skipped: needs CuPy and a CUDA GPU: " \
           f"{backend.gpu_unavailable_reason()}" in out, out


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU: the script would run in full")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_without_a_gpu_says_so_in_one_line(tmp_path):
    # OUTDIR given relative to the caller's directory: the script makes it absolute before it cds
    env = dict(os.environ, PYTHON=sys.executable)
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "out/gpu"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 3, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu_check.sh: no usable GPU here: CuPy"), lines
    outdir = tmp_path / "out" / "gpu"
    assert str(outdir) in lines[0]
    env_log = (outdir / "env.txt").read_text()
    for section in ("==== python", "==== pip list", "==== nvidia-smi", "==== cupy.show_config()"):
        assert section in env_log
    assert "pytest" in env_log                           # pip list ran


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("args, message", [([], "usage: bash scripts/gpu_check.sh OUTDIR"),
                                           (["out", "everything"], "step 'everything' is not one of")])
def test_gpu_check_script_rejects_bad_usage(tmp_path, args, message):
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr


# -- hypothesis missing (the GPU machine may not have it) -------------------------------------------------
# A finder first on sys.meta_path that refuses hypothesis. Run with PYTEST_DISABLE_PLUGIN_AUTOLOAD=1:
# otherwise pytest marks the packages of its entry-point plugins (hypothesis among them) for assertion
# rewriting, and its rewriting finder, ahead of this one, would still find hypothesis.
BLOCK_HYPOTHESIS = """
import sys
class _NoHypothesis:
    def find_spec(self, name, path=None, target=None):
        if name == "hypothesis" or name.startswith("hypothesis."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _NoHypothesis())
"""

PROPERTY = '''
import pytest
from conftest import HAS_HYPOTHESIS, HealthCheck, example, given, settings, st

SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("k", [1, 2])
@SETTINGS
@given(n=st.integers(0, 9).map(lambda v: v * 2), flag=st.booleans())
@example(n=4, flag=True)
def test_property(k, n, flag, tmp_path):
    assert n % 2 == 0 and k in (1, 2)


@given(st.data())
def test_positional(data):
    assert data.draw(st.integers(0, 1)) in (0, 1)


def test_plain():
    assert not HAS_HYPOTHESIS
'''


def test_without_hypothesis_property_tests_skip_and_the_rest_run(tmp_path):
    run = _pytest(tmp_path, PROPERTY, "test_tiny.py", block_hypothesis=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "1 passed, 3 skipped" in out, out
    assert "hypothesis is not installed" in out, out


def test_without_hypothesis_every_test_module_still_collects(tmp_path):
    # every module that uses hypothesis imports it through conftest, so none aborts collection
    modules = sorted(str(p) for p in TESTS.glob("test_*.py") if "@given" in p.read_text())
    assert modules
    code = BLOCK_HYPOTHESIS + ("import pytest\nrc = pytest.main(sys.argv[1:])\n"
                               "print('hypothesis imported:', 'hypothesis' in sys.modules)\nsys.exit(rc)")
    cmd = [sys.executable, "-c", code, "-p", "no:cacheprovider", "--collect-only", "-q", *modules]
    env = {k: v for k, v in os.environ.items() if k != backend.REQUIRE_GPU_ENV}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "hypothesis imported: False" in run.stdout


def test_hypothesis_profile_is_deterministic():
    hypothesis = pytest.importorskip("hypothesis")
    if os.environ.get("HYPOTHESIS_PROFILE", "minissd") != "minissd":
        pytest.skip("another hypothesis profile was chosen with HYPOTHESIS_PROFILE")
    default = hypothesis.settings.default
    assert default.derandomize is True and default.deadline is None
    assert default.max_examples == 60 and default.database is None

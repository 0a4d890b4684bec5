"""The A/B benchmark rules (benchmarks/_bench.py) and a smoke run of each benchmark script's --quick mode.

No timing is asserted: the smoke runs only prove that the scripts run and print their tables."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import requires_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _bench  # noqa: E402


def test_busy_threshold_and_guard(monkeypatch):
    assert _bench.busy_threshold(2) == 2.5 and _bench.busy_threshold(1) == 1.5
    loads = iter([1.0, 2.6])
    monkeypatch.setattr(_bench, "load1", lambda: next(loads))
    with _bench.LoadGuard(2) as g:
        pass
    assert g.before == 1.0 and g.after == 2.6 and g.busy and "BUSY" in g.line()
    rec = _bench.Recorder(allow_busy=False)
    rec.note(g)
    assert rec.exit_code() == _bench.BUSY_EXIT
    assert _bench.Recorder(allow_busy=True).exit_code() == 0
    monkeypatch.setattr(_bench, "load1", lambda: 2.5)
    with _bench.LoadGuard(2) as quiet:
        pass
    assert not quiet.busy and "quiet" in quiet.line()
    monkeypatch.setattr(_bench, "load1", lambda: float("nan"))   # unknown load is not quiet
    with _bench.LoadGuard(2) as unknown:
        pass
    assert unknown.busy


def test_interleaved_runs_rounds_in_turn():
    calls = []
    times = _bench.interleaved([lambda: calls.append("a"), lambda: calls.append("b")], 3, warmup=1)
    assert calls == ["a", "b"] * 4 and [len(t) for t in times] == [3, 3]
    with pytest.raises(ValueError, match="repeats"):
        _bench.interleaved([lambda: None], 0)


def test_short_rows_get_more_rounds():
    # at least `repeats`; enough rounds for min_seconds of calls; never past the cap
    assert _bench.rounds_for(7, 0.5, 0.0) == 7
    assert _bench.rounds_for(7, 0.5, 3.0) == 7
    assert _bench.rounds_for(7, 0.01, 3.0) == _bench.MAX_ROUNDS
    assert _bench.rounds_for(7, 0.1, 3.0) == 30
    assert _bench.rounds_for(7, 0.1, 3.0, max_rounds=20) == 20
    assert _bench.rounds_for(9, 0.1, 0.5, max_rounds=5) == 9
    calls = []
    times = _bench.interleaved([lambda: calls.append("a"), lambda: calls.append("b")], 3, settle=0,
                               min_seconds=1e-3, max_rounds=8)
    # the calls take nanoseconds: capped at 8 rounds, after two warm-up rounds
    assert [len(t) for t in times] == [8, 8]
    assert calls == ["a", "b"] * 10


def test_stat_and_ratio():
    s = _bench.Stat([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max) == (2.0, 1.0, 3.0)
    assert s.fmt(1000, 0) == "2000 [1000-3000]"
    r = _bench.ratio_stat([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
    assert r.median == 3.0 and r.min == 2.0 and r.max == 4.0
    with pytest.raises(ValueError):
        _bench.ratio_stat([1.0], [1.0, 2.0])


def test_flops_and_peak():
    f = _bench.conv_flops(2, 3, 4, 5, 5, 3, 3)
    assert f["forward"] == 2 * 2 * 4 * 25 * 3 * 9 and f["total"] == 3 * f["forward"]
    assert _bench.conv_flops(2, 3, 4, 5, 5, 3, 3, input_grad=False)["total"] == 2 * f["forward"]
    assert _bench.fma_lanes({"avx512f", "avx2", "fma"}) == 16
    assert _bench.fma_lanes({"avx2", "fma"}) == 8 and _bench.fma_lanes({"sse2"}) == 0
    # Zen 4 splits 512-bit FMAs over its 256-bit pipes; Zen 5 and Intel do not
    assert _bench.fma_lanes({"avx512f", "avx2", "fma"}, "AuthenticAMD", 25) == 8
    assert _bench.fma_lanes({"avx512f", "avx2", "fma"}, "AuthenticAMD", 26) == 16
    assert _bench.fma_lanes({"avx512f", "avx2", "fma"}, "GenuineIntel", 6) == 16
    peak = _bench.cpu_peak(2, clock_ghz=3.0)
    if peak["lanes"]:
        assert peak["gflops"] == pytest.approx(2 * peak["lanes"] * 2 * 2 * 3.0)
    clock = _bench.measured_clock_ghz(trials=3, loops=10_000)
    assert clock is None or 0.2 < clock < 10.0


def test_thread_list():
    assert _bench.thread_list("2,1") == [2, 1] and _bench.thread_list("1,1") == [1]
    for bad in ("0", "a", ""):
        with pytest.raises(Exception, match="--threads"):
            _bench.thread_list(bad)


def _run(args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@requires_torch
@pytest.mark.parametrize("script", ["benchmarks/conv.py", "benchmarks/model.py"])
def test_quick_mode_runs(script):
    out = _run([script, "--quick", "--allow-busy", "--threads", "1", "--repeats", "1"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "minissd / " in out.stdout and "load average (1 min) before" in out.stdout
    assert "fp32 peak" in out.stdout and "minissd float32 GEMM: " in out.stdout


def test_bad_threads_is_a_clear_error():
    out = _run(["benchmarks/conv.py", "--threads", "0"])
    assert out.returncode == 2 and "--threads" in out.stderr


def test_runnable_samples_mark_a_table_busy(monkeypatch):
    monkeypatch.setattr(_bench, "load1", lambda: 0.1)
    counts = iter([0, 1, 1, 0])
    monkeypatch.setattr(_bench, "others_running", lambda: next(counts))
    with _bench.LoadGuard(2) as g:
        for _ in range(4):
            g.sample()
    assert g.crowded and g.busy and "2 of 4 samples" in g.line()
    with _bench.LoadGuard(2) as quiet:
        pass
    assert not quiet.busy
    monkeypatch.undo()
    assert _bench.others_running() >= -1


def test_missed_objects_follows_the_devkit_matching():
    """One image: two circles (one found, one only by a box at IoU 0.4), a difficult square never found
    (not counted), a cross found only by a detection of another class (missed)."""
    import misses

    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], float),
          "labels": np.array([1, 1, 2, 4]), "difficult": np.array([False, False, True, False])}
    det = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 24], [60, 60, 70, 70]], float),
           "labels": np.array([1, 1, 3]), "scores": np.array([0.9, 0.8, 0.7])}
    missed, found, total = misses.missed_objects([det], [gt])
    assert total == {1: 2, 2: 0, 4: 1} and found == {1: 1}
    assert [(m["gt"], m["label"]) for m in missed] == [(1, 1), (3, 4)]
    assert missed[0]["best_iou"] == pytest.approx(0.4) and missed[1]["best_iou"] == 0.0


def test_misses_script_runs_on_a_saved_model(tmp_path):
    from minissd.model import build_model
    from minissd.model.saving import save_model

    path = save_model(str(tmp_path / "m.npz"), build_model("small", 5, rng=np.random.default_rng(0)),
                      meta={"class_names": ["circle", "square", "triangle", "cross"]})
    out = _run(["benchmarks/misses.py", path, "--limit", "3", "--show", "2"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "never matched at IoU >= 0.5" in out.stdout and "11-point AP ceiling" in out.stdout


def test_threads_script_compares_the_two_pools():
    """benchmarks/threads.py: both contenders run (its A side really turns the fork-join pool off:
    tests/test_fork_join.py checks the switch)."""
    out = _run(["benchmarks/threads.py", "--quick", "--allow-busy", "--threads", "2", "--repeats", "1"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| region | Python pool | fork-join pool | fork-join / Python pool |" in out.stdout
    assert "empty region" in out.stdout and "load average (1 min) before" in out.stdout


@requires_torch
def test_conv_paths_script_runs():
    """benchmarks/conv_paths.py: the path variants and the two-thread GEMM table both print."""
    out = _run(["benchmarks/conv_paths.py", "--quick", "--allow-busy", "--threads", "1", "--repeats", "1"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| conv1, batch 2 |" in out.stdout and "whole batch / present" in out.stdout
    assert "| conv1 dW, 16x16384 @ (27x16384).T |" in out.stdout and "K-chunks of 2048" in out.stdout


@requires_torch
def test_gemm_script_compares_the_three_gemms():
    """benchmarks/gemm.py: own, OpenBLAS and torch rows where the CPU has AVX-512F; a clear line where not."""
    out = _run(["benchmarks/gemm.py", "--quick", "--allow-busy", "--repeats", "1"])
    assert out.returncode == 0, out.stderr[-2000:]
    if "has no AVX-512F" in out.stdout:
        return
    assert "| conv3 forward | 64 x 8192 x 288 (A, B) |" in out.stdout
    assert "| conv3 dW | 64 x 288 x 8192 (A, B.T) |" in out.stdout and "own / torch: median" in out.stdout
    assert "minissd float32 GEMM: avx512" in out.stdout


def test_gemm_script_is_single_threaded():
    out = _run(["benchmarks/gemm.py", "--threads", "2"])
    assert out.returncode != 0 and "--threads 1 only" in out.stderr


def test_interleaved_bursts_time_only_the_last_calls_of_each_side():
    calls = []
    times = _bench.interleaved([lambda: calls.append("a"), lambda: calls.append("b")], 2, warmup=0, settle=0,
                               burst=(2, 3))
    assert calls == ["a"] * 5 + ["b"] * 5 + ["a"] * 5 + ["b"] * 5
    assert [len(t) for t in times] == [2, 2]
    with pytest.raises(ValueError, match="burst"):
        _bench.interleaved([lambda: None], 1, burst=(0, 0))

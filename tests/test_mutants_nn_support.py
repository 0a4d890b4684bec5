"""Small tests written for the mutants of minissd/nn/module.py, init.py, workspace.py and threads.py that the
suite let live (tests/mutation/nn.md, "Second run"). Each docstring names the mutants it kills."""
from __future__ import annotations

import numpy as np
import pytest

from minissd.nn import threads as threads_mod
from minissd.nn.init import fan_in, he_normal, xavier_uniform
from minissd.nn.module import Module, Sequential
from minissd.nn.workspace import Workspace


class _Leaf(Module):
    def __init__(self, shape=(2, 3)):
        super().__init__()
        self.add_param("W", np.arange(np.prod(shape), dtype=np.float32).reshape(shape))

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


@pytest.fixture
def four_threads():
    old = threads_mod.get_num_threads()
    threads_mod.set_num_threads(4)
    yield
    threads_mod.set_num_threads(old)


# -- init.py ---------------------------------------------------------------------------------------------
def test_fan_in_is_the_product_of_all_dims_but_the_first():
    """fan_in mutants 4, 5, 8 (the slice or the product changed)."""
    assert fan_in((5, 3, 2, 4)) == 24
    assert fan_in((7, 6)) == 6


def test_xavier_and_he_have_caffes_scales():
    """xavier_uniform 3, 4, 11 and he_normal 3, 4, 7 (the 3 / 2 in the scale, or the dtype)."""
    rng = np.random.default_rng(0)
    w = xavier_uniform((200, 50, 3, 3), rng)
    assert w.dtype == np.float32
    a = np.sqrt(3.0 / 450)
    assert np.abs(w).max() <= a and np.abs(w).max() > 0.99 * a
    h = he_normal((200, 50, 3, 3), rng)
    assert h.dtype == np.float32
    assert abs(h.std() / np.sqrt(2.0 / 450) - 1) < 0.01
    assert he_normal((4, 4), rng, np.float64).dtype == np.float64
    assert xavier_uniform((4, 4), rng, np.float64).dtype == np.float64


# -- workspace.py ------------------------------------------------------------------------------------------
def test_workspace_reuses_a_big_enough_buffer_and_keys_by_dtype():
    """Workspace.get mutants 5, 6, 7, 10, 11 (the key or the grow test)."""
    ws = Workspace()
    a = ws.get(np, "s", (4, 5), np.float32)
    b = ws.get(np, "s", (2, 3), np.float32)
    assert np.shares_memory(a, b) and len(ws) == 1 and ws.nbytes == 80
    c = ws.get(np, "s", (2, 3), np.float64)
    assert not np.shares_memory(a, c) and len(ws) == 2
    d = ws.get(np, "t", (2, 3), np.float32)
    assert not np.shares_memory(a, d) and len(ws) == 3
    e = ws.get(np, "s", (5, 5), np.float32)
    assert e.shape == (5, 5) and len(ws) == 3 and ws.nbytes == 100 + 48 + 24


# -- module.py ---------------------------------------------------------------------------------------------
def test_repr_of_a_container_indents_its_children_one_per_line():
    """Module.__repr__ mutants 4-18 and extra_repr 1."""
    inner = Sequential(("a", _Leaf()), ("b", _Leaf()))
    outer = Sequential(("x", inner), ("y", _Leaf()))
    assert repr(_Leaf()) == "_Leaf()"
    assert repr(outer) == ("Sequential(\n  (x): Sequential(\n    (a): _Leaf()\n    (b): _Leaf()\n  )\n"
                           "  (y): _Leaf()\n)")


def test_module_call_eval_state_dict_parameters_and_iteration():
    """__call__ 1, eval 1, state_dict 1, parameters 1, named_parameters 2, Sequential __iter__ 1,
    __getitem__ 1, __init__ 1, 9, 10, add_child 1, add_param 2, astype 5."""
    leaf = _Leaf()
    x = np.ones(3)
    assert leaf(x) is x
    seq = Sequential(leaf, _Leaf((4,)))
    assert list(seq.children) == ["0", "1"]
    assert seq[0] is leaf and seq["1"] is seq[1] and list(seq) == [leaf, seq[1]]
    assert seq.eval() is seq and seq.training is False and leaf.training is False
    assert list(seq.state_dict()) == ["0.W", "1.W"]
    assert [n for n, _, _ in seq.parameters()] == ["0.W", "1.W"]
    assert [n for n, _, _ in seq.named_parameters("m")] == ["m.0.W", "m.1.W"]
    single = Sequential(leaf)                      # one Module, not a list: named "0"
    assert list(single.children) == ["0"]
    with pytest.raises(ValueError):
        Module().add_child("a.b", _Leaf())
    seq.astype(np.float64)
    assert leaf.grads["W"].dtype == np.float64
    assert leaf.grads["W"].shape == (2, 3)


def test_load_state_dict_non_strict_copies_every_present_name_with_the_models_dtype():
    """load_state_dict 5, 8, 11, 18, 19, 24, 26."""
    m = Sequential(("a", _Leaf()), ("b", _Leaf()), ("c", _Leaf()))
    new = np.full((2, 3), 7.0)                    # float64 into float32 parameters
    m.load_state_dict({"a.W": np.zeros((2, 3)), "c.W": new}, strict=False)
    assert np.all(m["a"].params["W"] == 0) and np.all(m["c"].params["W"] == 7)
    assert m["c"].params["W"].dtype == np.float32
    assert m["b"].params["W"][1, 2] == 5
    top = _Leaf()
    top.load_state_dict({"W": np.ones((2, 3))})
    assert np.all(top.params["W"] == 1)
    with pytest.raises(ValueError, match="unexpected"):
        m.load_state_dict({"a.W": new, "b.W": new, "c.W": new, "d.W": new})


# -- threads.py --------------------------------------------------------------------------------------------
def test_default_threads_reads_the_environment_then_the_affinity(monkeypatch):
    """_default_threads 3, 5, 8, 13, 15-19 (and 20-26 where sched_getaffinity is missing)."""
    monkeypatch.setenv("MINISSD_NUM_THREADS", " 1 ")
    assert threads_mod._default_threads() == 1
    monkeypatch.setenv("MINISSD_NUM_THREADS", "3")
    assert threads_mod._default_threads() == 3
    monkeypatch.delenv("MINISSD_NUM_THREADS")
    import os
    assert threads_mod._default_threads() == max(1, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)
    assert threads_mod._default_threads() == 1
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads_mod._default_threads() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert threads_mod._default_threads() == 1


def test_numpys_openblas_is_found_and_its_gemm_entry_points_are_real_addresses():
    """_openblas_libraries 1-21, _blas_gemm_entry_points 1-44, _pin_blas_to_one_thread: the values are cached
    in the parent process, so only a direct call reaches the mutants."""
    libs = threads_mod._openblas_libraries()
    assert libs, "numpy's bundled OpenBLAS was not found"
    ep = threads_mod._blas_gemm_entry_points()
    assert isinstance(ep, tuple) and len(ep) == 3
    s, d, ilp64 = ep
    assert isinstance(s, int) and isinstance(d, int) and s and d and s != d
    assert isinstance(ilp64, bool)
    assert threads_mod._pin_blas_to_one_thread() is True


def test_set_num_threads_accepts_zero_and_refuses_negatives_and_floats(four_threads, monkeypatch):
    """set_num_threads 1, 3, 5, 6 (the argument check)."""
    monkeypatch.setenv("MINISSD_NUM_THREADS", "2")
    threads_mod.set_num_threads(0)
    assert threads_mod.get_num_threads() == 2
    threads_mod.set_num_threads(np.int64(3))
    assert threads_mod.get_num_threads() == 3
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError):
            threads_mod.set_num_threads(bad)


def test_split_gives_one_range_per_thread_each_at_least_grain_long(four_threads):
    """split 1, 11, 17."""
    assert threads_mod.split(100) == [0, 25, 50, 75, 100]
    assert threads_mod.split(1) == [0, 1]
    assert threads_mod.split(3, grain=2) == [0, 3]
    assert threads_mod.split(4, grain=2) == [0, 2, 4]


def test_parallel_for_and_sum_cover_the_range_in_order_on_named_threads(four_threads):
    """parallel_for 1, 2, 10, 11; parallel_sum 1, 10, 15; _run 5, 11, 13, 18-24, 26, 27."""
    import threading
    seen = []
    names = set()

    def rec(a, b):
        seen.append((a, b))
        names.add(threading.current_thread().name)

    threads_mod.parallel_for(0, rec)
    assert seen == []
    threads_mod.parallel_for(2, rec, grain=2)
    assert seen == [(0, 2)]
    seen.clear()
    threads_mod.parallel_for(8, rec, grain=2)
    assert sorted(seen) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert any(n.startswith("minissd_") for n in names)
    assert threads_mod._THREADS["pool"] is not None
    assert threads_mod._THREADS["pool"]._max_workers == 3
    parts = []
    total = threads_mod.parallel_sum(8, lambda a, b: parts.append((a, b)) or [(a, b)], grain=2)
    assert total == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert threads_mod.parallel_sum(1, lambda a, b: b - a, grain=1) == 1
    assert threads_mod.parallel_sum(0, lambda a, b: (a, b)) == (0, 1)

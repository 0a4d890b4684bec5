"""Small tests written for the mutants of minissd/nn/module.py, init.py, workspace.py and threads.py that the
suite let live (tests/mutation/nn.md, "Second run"). Each docstring names the mutants it kills."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import threads_set_to
from minissd.nn import threads as threads_mod
from minissd.nn.init import fan_in, he_normal, init_weight, xavier_uniform
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
    with threads_set_to(4):
        yield


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


def test_init_weight_passes_the_dtype_to_both_fillers():
    """init_weight 18 (he_normal called without the dtype: float32 whatever was asked)."""
    rng = np.random.default_rng(0)
    assert init_weight("he", (4, 3), rng, np.float64).dtype == np.float64
    assert init_weight("xavier", (4, 3), rng, np.float64).dtype == np.float64


# -- workspace.py ------------------------------------------------------------------------------------------
def test_workspace_reuses_a_big_enough_buffer_and_keys_by_dtype():
    """Workspace.get mutants 5, 6, 7, 10 (the key or the grow test)."""
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
    f = ws.get(np, "s", (5, 5), np.float32)             # exactly the size it has: the same buffer
    assert np.shares_memory(e, f) and ws.nbytes == 100 + 48 + 24


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
    __getitem__ 1, __init__ 1, 9, 10, add_child 1, add_param 2."""
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


def test_astype_back_to_float32_casts_the_gradients_too():
    """astype 5 (the gradients cast with ``astype(None)``, i.e. to float64: invisible when the target
    is float64, as in the test above)."""
    leaf = _Leaf()
    leaf.astype(np.float64).astype(np.float32)
    assert leaf.params["W"].dtype == np.float32
    assert leaf.grads["W"].dtype == np.float32


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


def test_the_gemm_entry_points_say_64_bit_integers_exactly_when_numpys_openblas_uses_them():
    """_blas_gemm_entry_points: the ilp64 flag of the entry that this wheel's OpenBLAS has (True -> False
    passes 32-bit integers on the stack to a GEMM that reads 64-bit ones). The oracle is numpy's own
    build record of its OpenBLAS (USE64BITINT)."""
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    conf = blas.get("openblas configuration")
    if not conf:
        pytest.skip("numpy does not record its OpenBLAS configuration")
    ep = threads_mod._blas_gemm_entry_points()
    assert ep, "numpy's OpenBLAS GEMM entry points were not found"
    assert ep[2] is ("USE64BITINT" in conf.split())


def test_a_pool_set_up_from_a_fresh_lookup_multiplies_float32_and_float64(in_forked_child):
    """_blas_gemm_entry_points and fork_join's first set-up, end to end: in a child whose pool has not
    looked the entry points up yet, the fork-join GEMM of both precisions is numpy's matmul."""
    def check():
        threads_mod._FORK_JOIN["blas"] = None
        threads_mod.set_num_threads(2)
        k = threads_mod.fork_join()
        if k is None:
            return False
        rng = np.random.default_rng(1)
        for dtype in (np.float32, np.float64):
            A = rng.standard_normal((5, 9)).astype(dtype)
            B = rng.standard_normal((9, 12)).astype(dtype)
            out = np.full((5, 12), np.nan, dtype)
            k.pool_gemm(A, B, out, [0, 6, 12])
            if not np.allclose(out, A @ B, rtol=1e-5, atol=1e-5):
                return False
        return True

    in_forked_child(check, "a GEMM on the freshly set-up fork-join pool")


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


def test_default_arguments_mean_all_threads_and_ranges_of_one(four_threads, monkeypatch):
    """set_num_threads 1 (n defaults to 0: the environment / the cores), split 1 and 17, parallel_for 1,
    parallel_sum 1 (grain defaults to 1 and a grain of 1 is not raised to 2), _run 5 (two ranges are two
    calls) and 13 (the Python pool is made once and kept)."""
    monkeypatch.setenv("MINISSD_NUM_THREADS", "2")
    threads_mod.set_num_threads()
    assert threads_mod.get_num_threads() == 2
    threads_mod.set_num_threads(4)
    assert threads_mod.split(3) == [0, 1, 2, 3]
    assert threads_mod.split(3, 1) == [0, 1, 2, 3]
    seen = []
    threads_mod.parallel_for(2, lambda a, b: seen.append((a, b)))
    assert sorted(seen) == [(0, 1), (1, 2)]
    pool = threads_mod._THREADS["pool"]
    assert pool is not None
    seen.clear()
    threads_mod.parallel_for(3, lambda a, b: seen.append((a, b)))
    assert sorted(seen) == [(0, 1), (1, 2), (2, 3)]
    assert threads_mod._THREADS["pool"] is pool
    assert threads_mod.parallel_sum(3, lambda a, b: [(a, b)]) == [(0, 1), (1, 2), (2, 3)]


def test_without_a_pinned_blas_the_layers_stay_on_one_thread(four_threads, monkeypatch):
    """set_num_threads 18, 22: when numpy's BLAS could not be set to one thread, any n > 1 becomes 1."""
    monkeypatch.setenv("MINISSD_NUM_THREADS", "3")
    monkeypatch.setitem(threads_mod._THREADS, "blas_pinned", False)
    threads_mod.set_num_threads(2)
    assert threads_mod._THREADS["n"] == 1
    threads_mod.set_num_threads(3)
    assert threads_mod._THREADS["n"] == 1
    threads_mod.set_num_threads(0)
    assert threads_mod._THREADS["n"] == 1


def test_get_num_threads_starts_from_the_default(four_threads, monkeypatch):
    """get_num_threads 5 (the first call asks set_num_threads for 1 thread instead of the default)."""
    monkeypatch.setenv("MINISSD_NUM_THREADS", "3")
    monkeypatch.setitem(threads_mod._THREADS, "n", None)
    assert threads_mod.get_num_threads() == 3


class _FakeLib:
    """Stands for a ctypes library that has only the symbols given (getattr of another one raises
    AttributeError, as ctypes.CDLL does)."""

    def __init__(self, **symbols):
        self.__dict__.update(symbols)


class _FakeSetThreads:
    def __init__(self):
        self.calls = []
        self.argtypes = self.restype = "unset"

    def __call__(self, n):
        self.calls.append(n)


_GEMM_TABLE = [("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True), ("cblas_sgemm64_", "cblas_dgemm64_", True),
               ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False), ("cblas_sgemm", "cblas_dgemm", False)]


def test_each_name_pair_of_the_gemm_table_is_looked_up_with_its_integer_width(monkeypatch):
    """_blas_gemm_entry_points 7-21 (names and flags of the entries after the first: this wheel has only
    the first), 27, 32 (getattr without a default raises on a library lacking a name), 33 (`and` -> `or`:
    an entry with only its sgemm), 44 (True for no OpenBLAS). Real function pointers of this numpy's
    OpenBLAS stand in under each entry's names."""
    import ctypes

    real = threads_mod._openblas_libraries()[0]
    s_ptr, d_ptr = real.scipy_cblas_sgemm64_, real.scipy_cblas_dgemm64_
    want_s, want_d = (ctypes.cast(f, ctypes.c_void_p).value for f in (s_ptr, d_ptr))
    for i, (s_name, d_name, ilp64) in enumerate(_GEMM_TABLE):
        symbols = {s_name: s_ptr, d_name: d_ptr}
        if i > 0:                                      # the entry before it, half there: skipped
            symbols[_GEMM_TABLE[i - 1][0]] = s_ptr
        monkeypatch.setattr(threads_mod, "_openblas_libraries", lambda symbols=symbols: [_FakeLib(**symbols)])
        assert threads_mod._blas_gemm_entry_points() == (want_s, want_d, ilp64), (s_name, d_name)
    monkeypatch.setattr(threads_mod, "_openblas_libraries", lambda: [])
    assert threads_mod._blas_gemm_entry_points() is False


def test_each_set_num_threads_name_is_tried_and_called_with_one_int(monkeypatch):
    """_pin_blas_to_one_thread 3-8 (the names after the first), 14 (getattr without a default), 16 (the
    argument type), 19 (one thread, not 2), 21 (True when no OpenBLAS was found)."""
    import ctypes

    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
             "openblas_set_num_threads64_", "openblas_set_num_threads")
    for name in names:
        fn = _FakeSetThreads()
        monkeypatch.setattr(threads_mod, "_openblas_libraries", lambda fn=fn, name=name: [_FakeLib(**{name: fn})])
        assert threads_mod._pin_blas_to_one_thread() is True, name
        assert fn.calls == [1] and fn.argtypes == [ctypes.c_int] and fn.restype is None, name
    monkeypatch.setattr(threads_mod, "_openblas_libraries", lambda: [])
    assert threads_mod._pin_blas_to_one_thread() is False


class _SpyKernels:
    """The compiled kernels, with the pool's set-up calls recorded."""

    def __init__(self, k):
        self._k = k
        self.calls = []

    def pool_setup(self, *args):
        self.calls.append(("pool_setup", args))
        return self._k.pool_setup(*args)

    def pool_set_workers(self, n):
        self.calls.append(("pool_set_workers", n))
        return self._k.pool_set_workers(n)

    def __getattr__(self, name):
        return getattr(self._k, name)


def test_the_fork_join_pool_is_set_up_started_kept_and_stopped(monkeypatch):
    """fork_join 3 (a pool at one thread), 23-33 (pool_setup's arguments; 25, the integer width, only
    shows here), 38, 39 (n - 1
    workers), 40, 42, 43, 46, 47 (workers that die at once: no target, no arguments, no seq), 44, 48, 50
    (daemon workers: a non-daemon one would keep the interpreter from exiting), 45, 49 (their names),
    57, 58 (the workers are remembered, not restarted on every call); _stop_fork_join 7 (the old workers
    are joined), 8, 13 (the pool is set up again, with the same entry points, after a stop)."""
    old = threads_mod.get_num_threads()
    threads_mod.set_num_threads(1)
    spy = _SpyKernels(threads_mod.cpu_kernels())
    monkeypatch.setattr(threads_mod, "_KERNELS", spy)
    monkeypatch.setitem(threads_mod._FORK_JOIN, "blas", None)
    try:
        assert threads_mod.fork_join() is None
        ep = threads_mod._blas_gemm_entry_points()
        setup = ("pool_setup", (ep[0], ep[1], ep[2], threads_mod.SPIN_SECONDS))
        threads_mod.set_num_threads(3)
        assert threads_mod.fork_join() is spy
        assert spy.calls == [setup, ("pool_set_workers", 2)]
        workers = threads_mod._FORK_JOIN["threads"]
        assert [t.name for t in workers] == ["minissd-fj1", "minissd-fj2"]
        assert all(t.daemon for t in workers)
        workers[0].join(0.2)                          # a worker without its job dies at once
        assert all(t.is_alive() for t in workers)
        assert threads_mod.fork_join() is spy and threads_mod._FORK_JOIN["threads"] is workers
        assert len(spy.calls) == 2
        threads_mod.set_num_threads(2)
        assert not any(t.is_alive() for t in workers)
        assert spy.calls[2:] == [setup]
    finally:
        threads_mod.set_num_threads(old)


def test_a_forked_child_resets_the_fork_join_pool_and_starts_its_own(monkeypatch, in_forked_child):
    """_forget_pool_in_child 4-22 (the at-fork hook: the child forgets the parent's workers, which do not
    exist there, and sets the pool up again with the same entry points). mutmut reports these mutants as
    "no tests": the hook runs in a forked child, where its calls are not recorded."""
    old = threads_mod.get_num_threads()
    threads_mod.set_num_threads(1)
    spy = _SpyKernels(threads_mod.cpu_kernels())
    monkeypatch.setattr(threads_mod, "_KERNELS", spy)
    try:
        threads_mod.set_num_threads(3)
        assert threads_mod.fork_join() is spy                 # the parent's workers run
        ep = threads_mod._FORK_JOIN["blas"]
        setup = ("pool_setup", (ep[0], ep[1], ep[2], threads_mod.SPIN_SECONDS))
        before = len(spy.calls)

        def check():
            if threads_mod._FORK_JOIN["threads"] != [] or spy.calls[before:] != [setup]:
                return False
            k = threads_mod.fork_join()
            workers = threads_mod._FORK_JOIN["threads"]
            return k is spy and len(workers) == 2 and all(t.is_alive() for t in workers)

        in_forked_child(check, "the fork-join pool after fork")
    finally:
        threads_mod.set_num_threads(old)


def test_openblas_libraries_looks_in_each_wheel_layout_and_skips_what_does_not_load(tmp_path, monkeypatch):
    """_openblas_libraries 6-9 (the macOS .dylibs and the older numpy/.libs patterns; this Linux wheel has
    only ../numpy.libs) and 21 (`break` for `continue`: a library that fails to load ends the search).
    numpy's directory and ctypes.CDLL are stood in for, so the test loads nothing."""
    import ctypes

    pkg = tmp_path / "numpy"
    for rel in ("numpy.libs/libscipy_openblas64_-x.so", "numpy.libs/libscipy_openblas64_-y.so",
                "numpy/.dylibs/libopenblas.0.dylib", "numpy/.libs/libopenblas.so", "numpy/.libs/libother.so"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")

    def fake_cdll(path):
        if path.endswith("-x.so"):
            raise OSError("cannot load")
        return "handle:" + path[len(str(tmp_path)) + 1:].replace("numpy/../", "")

    monkeypatch.setattr(np, "__file__", str(pkg / "__init__.py"))
    monkeypatch.setattr(ctypes, "CDLL", fake_cdll)
    assert threads_mod._openblas_libraries() == ["handle:numpy.libs/libscipy_openblas64_-y.so",
                                                 "handle:numpy/.dylibs/libopenblas.0.dylib",
                                                 "handle:numpy/.libs/libopenblas.so"]


# -- nn/checks.py (mutated in session 5 after the other nn files) --------------------------------------
def test_positive_int_refuses_floats_strings_and_bools_with_a_value_error():
    from minissd.nn.checks import positive_int

    assert positive_int(3, "n") == 3 and positive_int(np.int64(2), "n") == 2
    for bad in (2.5, "3", True, 0, -1):
        with pytest.raises(ValueError, match="n must be a positive int"):
            positive_int(bad, "n")


def test_check_input_refuses_an_object_with_a_shape_but_no_dtype():
    from minissd.nn.checks import check_input

    class ShapeOnly:
        shape = (1, 3, 4, 4)

    with pytest.raises(ValueError, match="L: input must be an array, got ShapeOnly"):
        check_input("L", ShapeOnly())

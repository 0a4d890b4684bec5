"""How the CPU layers run: the Cython kernels of csrc/im2col.pyx and numpy's OpenBLAS on a few threads.

The layers split their work (GEMM columns, im2col rows, pooled planes, ReLU elements) into one
contiguous range per thread (`split`) and run the ranges in one of two ways:

* The fork-join pool (`fork_join`; the convolution's GEMMs, im2col/col2im and copies). Its workers are
  C threads that never take the GIL; a region's jobs are claimed one at a time by the caller and the
  workers, and after a region each worker spins for `SPIN_SECONDS` before it sleeps. Why: a region
  handed to a thread that sleeps on a lock costs a wake-up (and the caller's wait another), 50-150 us
  each on the 2-vCPU virtual machines this was measured on, whose idle CPUs halt; a layer runs up to 8
  regions, and the small model's 4x4 and 8x8 heads took longer on 2 threads than on 1 that way (1.7-1.9x
  PyTorch's time, which spins the same way with OpenMP; 0.8-1.3x with the pool, benchmarks/RESULTS.md).
  A worker that is slow to wake costs nothing but its share: the caller claims the jobs it has not.
* `parallel_for` / `parallel_sum` on a pool of Python threads (max-pool, ReLU, the blocked convolution
  of large maps, whose jobs run Python between kernels), and everywhere when numpy's BLAS is not the
  OpenBLAS whose entry points the fork-join pool calls.

Why not OpenBLAS's own threads: its workers busy-wait at the end of every call for much longer, and on
a machine whose cores are shared with other processes a descheduled worker stalls the whole call
(measured on the 2-core development machine under load: a 16->32 channel 3x3 conv at batch 16,
forward + backward, took 0.4-4 s with OpenBLAS's 2 threads and 0.12 s single-threaded). OpenBLAS is
asked for one thread per call; the pools' spinning is bounded, and then they wait on a lock.

Every output element is written by exactly one range, and `parallel_sum` (like `_gemm_nt` in conv.py)
adds its parts in range order, so for a given number of threads the results do not depend on which
thread ran which range.
"""
from __future__ import annotations

import os

import numpy as np

_KERNELS = None


def cpu_kernels():
    """The compiled module minissd._im2col (im2col/col2im, max-pool and ReLU loops), loaded once."""
    global _KERNELS
    if _KERNELS is None:
        from .._ext import load_extension

        _KERNELS = load_extension("_im2col")
    return _KERNELS


_THREADS = {"n": None, "pool": None, "blas_pinned": None}
# Which float32 GEMM the CPU layers call (see `set_gemm`): None until first asked.
_GEMM = {"kind": None}
GEMM_KINDS = ("auto", "blas", "avx512")
# The fork-join pool of csrc/im2col.pyx (see `fork_join`): its worker threads, and the BLAS entry points
# it calls (None: not looked up yet; False: not found, the layers use the Python pool).
_FORK_JOIN = {"threads": [], "blas": None, "enabled": True}
# How long a fork-join worker spins for the next region (and the caller for the workers) before it
# sleeps. A layer's regions follow each other within tens of microseconds; a millisecond covers the
# gaps between the layers of a training step too, and costs at most that much CPU after the last.
SPIN_SECONDS = 1e-3


def _forget_pool_in_child() -> None:
    """After fork: the child inherits the executor object and the fork-join pool's state but none of their
    threads, so work handed to them would wait forever; the child starts its own pools on first use."""
    _THREADS["pool"] = None
    if _FORK_JOIN["threads"]:
        _FORK_JOIN["threads"] = []
        blas = _FORK_JOIN["blas"]
        if blas:
            cpu_kernels().pool_setup(blas[0], blas[1], blas[2], SPIN_SECONDS)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _default_threads() -> int:
    env = os.environ.get("MINISSD_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"MINISSD_NUM_THREADS={env!r} is not an integer") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _openblas_libraries():
    """ctypes handles of the OpenBLAS libraries bundled with numpy (none for another BLAS)."""
    import ctypes
    import glob

    here = os.path.dirname(np.__file__)
    candidates = []
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", "../numpy/.libs/*openblas*"):
        candidates += sorted(glob.glob(os.path.join(here, pattern)))
    libs = []
    for path in candidates:
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def _blas_gemm_entry_points():
    """(address of cblas_sgemm, of cblas_dgemm, 64-bit integers?) in numpy's OpenBLAS, or False."""
    import ctypes

    names = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True), ("cblas_sgemm64_", "cblas_dgemm64_", True),
             ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False), ("cblas_sgemm", "cblas_dgemm", False))
    for lib in _openblas_libraries():
        for s_name, d_name, ilp64 in names:
            s_fn, d_fn = getattr(lib, s_name, None), getattr(lib, d_name, None)
            if s_fn is not None and d_fn is not None:
                return (ctypes.cast(s_fn, ctypes.c_void_p).value, ctypes.cast(d_fn, ctypes.c_void_p).value, ilp64)
    return False


def _pin_blas_to_one_thread() -> bool:
    """Ask numpy's OpenBLAS for single-threaded calls; False when that BLAS cannot be found."""
    import ctypes

    for lib in _openblas_libraries():
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                fn(1)
                return True
    return False


def set_num_threads(n: int = 0) -> None:
    """Threads for minissd's CPU layers (0: $MINISSD_NUM_THREADS, else the cores this process may use).

    numpy's OpenBLAS is set to one thread per call (the layers split each GEMM themselves); if that
    BLAS cannot be reached (numpy built against another BLAS), the layers stay single-threaded and
    leave that BLAS's own threading alone.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"set_num_threads: n must be an int >= 0, got {n!r}")
    n = int(n) or _default_threads()
    if _THREADS["blas_pinned"] is None:
        _THREADS["blas_pinned"] = _pin_blas_to_one_thread()
    if n > 1 and not _THREADS["blas_pinned"]:
        n = 1
    old, _THREADS["pool"] = _THREADS["pool"], None
    if old is not None:
        old.shutdown(wait=True)
    _stop_fork_join()
    _THREADS["n"] = n


def _stop_fork_join() -> None:
    workers, _FORK_JOIN["threads"] = _FORK_JOIN["threads"], []
    if workers:
        k = cpu_kernels()
        k.pool_stop()
        for t in workers:
            if t is not None:
                t.join()
        blas = _FORK_JOIN["blas"]
        if blas:                                  # clears the stop flag and the worker count
            k.pool_setup(blas[0], blas[1], blas[2], SPIN_SECONDS)


def fork_join():
    """The compiled kernels with their fork-join pool running ``get_num_threads() - 1`` workers, or None
    when the layers should use `parallel_for` instead (one thread, or numpy's BLAS not found).

    The ``pool_*`` functions of minissd._im2col run one job per range of a split (`split`): job 0 in the
    calling thread, job i on worker i, none of them holding the GIL. Workers spin for `SPIN_SECONDS`
    after a job before they sleep, which is what makes a region cheap to start; csrc/im2col.pyx has the
    details. A second thread calling while one region runs gets its jobs run serially."""
    n = get_num_threads()
    get_gemm()                                       # the pool's GEMM jobs follow the choice
    if n <= 1 or not _FORK_JOIN["enabled"]:        # "enabled": off in benchmarks/threads.py's A side
        return None
    k = cpu_kernels()
    if len(_FORK_JOIN["threads"]) == n - 1:
        return k
    if not _blas_ready(k):
        return None
    import threading

    _stop_fork_join()
    k.pool_set_workers(n - 1)
    seq = k.pool_seq()
    workers = [threading.Thread(target=k.pool_worker, args=(i, seq), daemon=True, name=f"minissd-fj{i}")
               for i in range(1, n)]
    for t in workers:
        t.start()
    _FORK_JOIN["threads"] = workers
    return k


def c_jobs():
    """The compiled kernels ready to run C jobs (`fork_join`'s pool when there are several threads; in
    the calling thread, serially, when there is one), or None where numpy's BLAS entry points are not
    found (or the fork-join pool is switched off). Conv2d's blocked path runs on it at every thread
    count, so that its sums are the same bits whatever the number of threads."""
    k = fork_join()
    if k is not None or not _FORK_JOIN["enabled"]:
        return k
    k = cpu_kernels()
    return k if _blas_ready(k) else None


def _blas_ready(k) -> bool:
    """Look numpy's BLAS entry points up once and hand them to the pool of kernels ``k``; False when
    they are not found."""
    if _FORK_JOIN["blas"] is None:
        _FORK_JOIN["blas"] = _blas_gemm_entry_points()
        if _FORK_JOIN["blas"]:
            blas = _FORK_JOIN["blas"]
            k.pool_setup(blas[0], blas[1], blas[2], SPIN_SECONDS)
    return bool(_FORK_JOIN["blas"])


def set_gemm(kind: str = "auto") -> str:
    """Choose the float32 GEMM of the CPU layers; returns the one in use ("blas" or "avx512").

    "blas" is numpy's OpenBLAS (cblas_sgemm in the fork-join pool, ``numpy.matmul`` elsewhere): the
    plain twin. "avx512" is minissd's own kernel (csrc/sgemm.h, minissd/nn/gemm.py), which runs the
    AVX-512 FMA units that this environment's OpenBLAS leaves to its AVX2 kernels
    (OPENBLAS_CORETYPE=Haswell). "auto" (the default, or ``$MINISSD_GEMM``) takes "avx512" where the
    CPU has AVX-512F, else "blas". float64 always uses the BLAS. Results of the two differ in the
    last bits (another summation order); each is deterministic, whatever the number of threads.
    """
    if kind not in GEMM_KINDS:
        raise ValueError(f"set_gemm: kind must be one of {', '.join(GEMM_KINDS)}, got {kind!r}")
    k = cpu_kernels()
    supported = k.own_sgemm_supported()
    if kind == "avx512" and not supported:
        raise ValueError("set_gemm: 'avx512' needs a CPU with AVX-512F (this one has none); use 'blas' or 'auto'")
    use = "avx512" if kind == "avx512" or (kind == "auto" and supported) else "blas"
    k.set_own_sgemm(use == "avx512")
    _GEMM["kind"] = use
    return use


def get_gemm() -> str:
    """The float32 GEMM in use, "blas" or "avx512" (chosen from ``$MINISSD_GEMM`` on first call)."""
    if _GEMM["kind"] is None:
        env = os.environ.get("MINISSD_GEMM", "").strip() or "auto"
        if env not in GEMM_KINDS:
            raise ValueError(f"MINISSD_GEMM={env!r}: must be one of {', '.join(GEMM_KINDS)}")
        set_gemm(env)
    return _GEMM["kind"]


def get_num_threads() -> int:
    """Threads the CPU layers use."""
    if _THREADS["n"] is None:
        set_num_threads(0)
    return _THREADS["n"]


def split(total: int, grain: int = 1) -> list:
    """Bounds of the ranges `parallel_for` runs ``range(total)`` in: one per thread, each at least
    ``grain`` long (a single range for small work)."""
    n = min(get_num_threads(), max(1, total // max(1, grain)))
    return [total * i // n for i in range(n + 1)]


def _run(fn, bounds):
    """fn over consecutive ranges of ``bounds``: the first in this thread, the rest on the pool."""
    n = len(bounds) - 1
    if n <= 1:
        return [fn(bounds[0], bounds[-1])]
    pool = _THREADS["pool"]
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor

        pool = _THREADS["pool"] = ThreadPoolExecutor(max_workers=get_num_threads() - 1,
                                                     thread_name_prefix="minissd")
    futures = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, n)]
    results = [fn(bounds[0], bounds[1])]
    results += [f.result() for f in futures]           # re-raises a worker's exception
    return results


def parallel_for(total: int, fn, grain: int = 1) -> None:
    """Run ``fn(start, stop)`` over ``range(total)`` split into one contiguous range per thread.

    Ranges are at least ``grain`` long, so small work stays in the calling thread. ``fn`` must write
    disjoint outputs for disjoint ranges.
    """
    if total > 0:
        _run(fn, split(total, grain))


def parallel_sum(total: int, fn, grain: int = 1):
    """``fn(start, stop)`` summed over the split of `parallel_for`, added in range order."""
    parts = _run(fn, split(max(total, 1), grain))
    acc = parts[0]
    for p in parts[1:]:
        acc = acc + p
    return acc

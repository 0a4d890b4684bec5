"""How the CPU layers run: the Cython kernels of csrc/im2col.pyx on a small pool of Python threads.

The layers split their work (GEMM columns, im2col rows, pooled planes, ReLU elements) into one
contiguous range per thread and run the ranges here; the GEMMs and the Cython kernels release the GIL,
and OpenBLAS is asked for one thread per call. Why not OpenBLAS's own threads: its workers busy-wait at
the end of every call, and on a machine whose cores are shared with other processes a descheduled
worker stalls the whole call (measured on the 2-core development machine under load: a 16->32 channel
3x3 conv at batch 16, forward + backward, took 0.4-4 s with OpenBLAS's 2 threads and 0.12 s
single-threaded). Pool threads wait on a lock instead, so a busy machine costs at most the share of the
CPU it takes away.

Every output element is written by exactly one range, and `parallel_sum` adds its parts in range order,
so the results do not depend on the number of threads.
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


def _forget_pool_in_child() -> None:
    """After fork: the child inherits the executor object but none of its threads, so work handed to it
    would wait forever; the child starts its own pool on first use."""
    _THREADS["pool"] = None


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


def _pin_blas_to_one_thread() -> bool:
    """Ask numpy's OpenBLAS for single-threaded calls; False when that BLAS cannot be found."""
    import ctypes
    import glob

    here = os.path.dirname(np.__file__)
    candidates = []
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", "../numpy/.libs/*openblas*"):
        candidates += sorted(glob.glob(os.path.join(here, pattern)))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
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
    _THREADS["n"] = n


def get_num_threads() -> int:
    """Threads the CPU layers use."""
    if _THREADS["n"] is None:
        set_num_threads(0)
    return _THREADS["n"]


def _split(total: int, grain: int) -> list:
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
        _run(fn, _split(total, grain))


def parallel_sum(total: int, fn, grain: int = 1):
    """``fn(start, stop)`` summed over the split of `parallel_for`, added in range order."""
    parts = _run(fn, _split(max(total, 1), grain))
    acc = parts[0]
    for p in parts[1:]:
        acc = acc + p
    return acc

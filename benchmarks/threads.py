"""The fork-join pool against the Python thread pool: what a parallel region costs minissd's layers.

    python benchmarks/threads.py [--threads 2] [--repeats 9] [--quick]

minissd's convolution runs its parallel regions (GEMM column ranges, im2col rows, copies) on a C
fork-join pool whose workers spin briefly between regions (minissd/nn/threads.py, csrc/im2col.pyx).
Before it, the same ranges ran on a pool of Python threads that sleep on a lock between regions. This
script runs both in one process, interleaved (Python pool, fork-join, Python pool, ...; the rules of
benchmarks/_bench.py: a pause before each timed call, median and spread, load average checked), on
the same ranges, for

* an empty region: two trivial jobs (a 1-element copy each), the bare cost of handing work over;
* forward + backward of the small model's convolutions at batch 16 and 32 (`benchmarks/conv.py`'s rows).

The ratio is fork-join time / Python-pool time (below 1: the fork-join pool is faster). Both sides
compute the same numbers (tests/test_fork_join.py). Results: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(ap, threads_default="2")
    args = ap.parse_args(argv)
    _bench.check_repeats(args.repeats)
    return args


ARGS = _parse() if __name__ == "__main__" else None

import numpy as np  # noqa: E402


def contenders(fn):
    """(Python pool, fork-join) versions of ``fn``: the same call with the fork-join pool hidden or not."""
    from minissd.nn import threads as threads_mod

    def python_pool():
        threads_mod._FORK_JOIN["enabled"] = False
        try:
            fn()
        finally:
            threads_mod._FORK_JOIN["enabled"] = True

    return python_pool, fn


def empty_region():
    """Two one-element jobs: on the Python pool a `parallel_for`, on the fork-join pool a row copy."""
    from minissd.nn import threads as threads_mod

    src = np.zeros((2, 1, 1), np.float32)
    dst = np.zeros((2, 1, 1), np.float32)

    def job(a, b):
        dst[a:b] = src[a:b]

    def region():
        fj = threads_mod.fork_join()
        if fj is None:
            threads_mod.parallel_for(2, job)
        else:
            fj.pool_rows(src, dst, None, 1, 1, [0, 1, 2])

    return region


def conv_step(row, batch):
    from minissd.nn import Conv2d

    _, C, Fo, S, k, s, p, d, input_grad = row
    rng = np.random.default_rng(0)
    conv = Conv2d(C, Fo, k, stride=s, padding=p, dilation=d, rng=rng, input_grad=input_grad)
    x = rng.standard_normal((batch, C, S, S)).astype(np.float32)
    OH = (S + 2 * p - d * (k - 1) - 1) // s + 1
    dy = rng.standard_normal((batch, Fo, OH, OH)).astype(np.float32)

    def step():
        conv.zero_grad()
        conv.forward(x)
        conv.backward(dy)

    return step


def main(args) -> int:
    from conv import model_layers

    from minissd.nn import set_num_threads
    from minissd.nn import threads as threads_mod

    repeats = args.repeats or (2 if args.quick else 9)
    print("# minissd parallel regions: Python thread pool vs fork-join pool, same ranges, float32, cpu")
    print(f"\n{_bench.machine_line(args.threads, args.gemm)} ({platform.python_version()})")
    print(f"median [min-max] of {repeats} interleaved rounds, {args.clock} clock; ratio = median of per-round "
          f"ratios fork-join / Python pool [min-max]")
    recorder = _bench.Recorder(args.allow_busy)
    rows = model_layers("small", 5)
    if args.quick:
        rows = rows[:2]
    for threads in args.threads:
        set_num_threads(threads)
        if threads > 1 and threads_mod.fork_join() is None:
            print("the fork-join pool is unavailable here (numpy's OpenBLAS entry points not found)", file=sys.stderr)
            return 2
        cases = [("empty region (2 one-element jobs)", empty_region())]
        for batch in ((16,) if args.quick else (16, 32)):
            cases += [(f"{row[0]}, batch {batch}", conv_step(row, batch)) for row, _ in rows]
        lines = []
        with _bench.LoadGuard(threads) as guard:
            for label, fn in cases:
                a, b = _bench.interleaved(list(contenders(fn)), repeats, args.clock)
                sa, sb, r = _bench.Stat(a), _bench.Stat(b), _bench.ratio_stat(b, a)
                scale, unit = (1e6, "us") if sa.median < 1e-3 else (1e3, "ms")
                lines.append(f"| {label} | {sa.fmt(scale)} {unit} | {sb.fmt(scale)} {unit} | {r.fmt(1, 2)} |")
                guard.sample()
                print(".", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        recorder.note(guard)
        mark = " BUSY |" if guard.busy else " |"
        print(f"\n### {threads} thread(s)\n")
        print("| region | Python pool | fork-join pool | fork-join / Python pool | |")
        print("|---|---:|---:|---:|---|")
        for line in lines:
            print(line + mark)
        print(f"\n{guard.line()}", flush=True)
    return recorder.exit_code()


if __name__ == "__main__":
    sys.exit(main(ARGS))

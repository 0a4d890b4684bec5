"""Alternatives to minissd's CPU convolution paths, timed against the present code and PyTorch.

    python benchmarks/conv_paths.py [--threads 1,2] [--quick]

Two questions from issue 17 (benchmarks/RESULTS.md, "Session 5"), answered in one process under the
rules of benchmarks/_bench.py (interleaved rounds, pauses, medians with spread, load average checked):

* **Paths.** For the small model's large-map layers (conv1-conv4, the blocked path at batches 16 and 32),
  the present code against the same layer with `BLOCK_BYTES` of 2 MiB and 4 MiB instead of 1 MiB, and
  against the whole-batch path (the blocked path switched off), with PyTorch's time as the yardstick.
  Ratios are each variant's time / the present code's (below 1: the variant is faster), and the present
  code's / PyTorch's, as in benchmarks/conv.py.
* **GEMMs in two threads.** The blocked path runs one GEMM per block in each of two threads at once
  (OpenBLAS itself on one thread). For the GEMM shapes of these layers: the time of two calls in a row
  / the time of the same two calls in two threads (2 = perfect), and for conv1's dW shape, one thread,
  the GFLOP/s of one GEMM over K against the sum of GEMMs over K-chunks of 2048.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench  # noqa: E402


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(ap, threads_default="1,2")
    args = ap.parse_args(argv)
    _bench.check_repeats(args.repeats)
    return args


ARGS = _parse() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

#: (M, K, N) of A (M, K) @ B (N, K).T or A (M, K) @ B (K, N): the blocked path's per-image GEMMs.
GEMMS = [("conv1 dW, 16x16384 @ (27x16384).T", (16, 16384, 27), "nt"),
         ("conv1 forward, 16x27 @ 27x16384", (16, 27, 16384), "nn"),
         ("conv2 dW, 32x4096 @ (144x4096).T", (32, 4096, 144), "nt"),
         ("conv2 forward, 32x144 @ 144x4096", (32, 144, 4096), "nn"),
         ("conv2 dx, 144x32 @ 32x4096", (144, 32, 4096), "nn"),
         ("large, 128x1152 @ 1152x2048", (128, 1152, 2048), "nn")]


def with_block_bytes(fn, nbytes):
    """``fn`` run with minissd.nn.conv.BLOCK_BYTES set to ``nbytes`` (restored after)."""
    from minissd.nn import conv as conv_mod

    def run():
        old = conv_mod.BLOCK_BYTES
        conv_mod.BLOCK_BYTES = nbytes
        try:
            fn()
        finally:
            conv_mod.BLOCK_BYTES = old

    return run


def gemm(shape, kind, rng):
    M, K, N = shape
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if kind == "nt" else (K, N), dtype=np.float32)
    return (lambda: a @ b.T) if kind == "nt" else (lambda: a @ b)


def two_threads_speedup(fn, calls=8, rounds=5):
    """Median over ``rounds`` of (2 x ``calls`` calls in a row) / (``calls`` calls in each of 2 threads)."""
    def work():
        for _ in range(calls):
            fn()

    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        work()
        work()
        t1 = time.perf_counter()
        ts = [threading.Thread(target=work) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out.append((t1 - t0) / (time.perf_counter() - t1))
    return _bench.Stat(out)


def k_chunked(a, b, kc):
    """``a @ b.T`` summed over K-chunks of ``kc``, in order."""
    K = a.shape[1]

    def run():
        acc = a[:, :kc] @ b[:, :kc].T
        for k0 in range(kc, K, kc):
            acc += a[:, k0:k0 + kc] @ b[:, k0:k0 + kc].T
        return acc

    return run


def main(args) -> int:
    import torch
    from conv import make_pair, model_layers

    from minissd.nn import set_num_threads

    repeats = args.repeats or (2 if args.quick else 7)
    min_seconds = 0.0 if args.quick else 3.0
    names = ("conv1", "conv4") if args.quick else ("conv1", "conv2", "conv3", "conv4")
    rows = [(r, n) for r, n in model_layers("small", 5) if r[0] in names]
    print("# minissd Conv2d paths against the present code and PyTorch; OpenBLAS GEMMs in two threads")
    print(f"\n{_bench.machine_line(args.threads, args.gemm)}; torch {torch.__version__} ({platform.python_version()})")
    print(f"median [min-max] of at least {repeats} interleaved rounds, {args.clock} clock; ratio = median of "
          f"per-round ratios variant / present")
    recorder = _bench.Recorder(args.allow_busy)
    for threads in args.threads:
        torch.set_num_threads(threads)
        set_num_threads(threads)
        lines = []
        with _bench.LoadGuard(threads) as guard:
            for batch in ((2,) if args.quick else (16, 32)):
                for row, _ in rows:
                    ours, theirs, _, conv = make_pair(row, batch)
                    variants = [ours, with_block_bytes(ours, 2 << 20), with_block_bytes(ours, 4 << 20),
                                with_block_bytes(ours, 1 << 60), theirs]
                    t = _bench.interleaved(variants, repeats, args.clock, min_seconds=min_seconds)
                    conv.clear_cache()
                    r = [_bench.ratio_stat(v, t[0]).median for v in t[1:-1]] + [_bench.ratio_stat(t[0], t[-1]).median]
                    lines.append(f"| {row[0]}, batch {batch} | {_bench.Stat(t[0]).fmt(1e3)} | "
                                 + " | ".join(f"{x:.2f}" for x in r) + " |")
                    guard.sample()
                    print(".", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        recorder.note(guard)
        mark = " BUSY |" if guard.busy else " |"
        print(f"\n### Paths, {threads} thread(s)\n")
        print("| layer | present ms | 2 MiB blocks / present | 4 MiB blocks / present | whole batch / present | "
              "present / PyTorch | |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for line in lines:
            print(line + mark)
        print(f"\n{guard.line()}", flush=True)

    set_num_threads(2)              # pins OpenBLAS to one thread; the two threads here are ours
    rng = np.random.default_rng(0)
    with _bench.LoadGuard(2) as guard:
        lines = []
        for label, shape, kind in (GEMMS[:2] if args.quick else GEMMS):
            s = two_threads_speedup(gemm(shape, kind, rng), rounds=2 if args.quick else 5)
            lines.append(f"| {label} | {s.fmt(1, 2)} |")
            guard.sample()
        a = rng.standard_normal((16, 16384), dtype=np.float32)
        b = rng.standard_normal((27, 16384), dtype=np.float32)
        flops = 2 * 16 * 16384 * 27
        whole = _bench.Stat(_bench.interleaved([lambda: a @ b.T], repeats * 3, args.clock, settle=0)[0])
        chunked = _bench.Stat(_bench.interleaved([k_chunked(a, b, 2048)], repeats * 3, args.clock, settle=0)[0])
    recorder.note(guard)
    mark = " BUSY |" if guard.busy else " |"
    print("\n### OpenBLAS GEMMs, two calls in a row / the same two in two threads (2 = perfect scaling)\n")
    print("| GEMM | speedup median [min-max] | |")
    print("|---|---:|---|")
    for line in lines:
        print(line + mark)
    print(f"\nconv1 dW GEMM on one thread: whole K {flops / whole.median / 1e9:.0f} GFLOP/s, summed over "
          f"K-chunks of 2048 {flops / chunked.median / 1e9:.0f} GFLOP/s")
    print(f"{guard.line()}", flush=True)
    return recorder.exit_code()


if __name__ == "__main__":
    sys.exit(main(ARGS))

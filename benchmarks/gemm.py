"""minissd's own float32 GEMM (csrc/sgemm.h) against numpy's OpenBLAS and torch.mm, one thread.

    python benchmarks/gemm.py [--repeats 7] [--min-seconds 1] [--quick]

The shapes are the GEMMs of the small model's convolutions as minissd runs them (minissd/nn/conv.py),
one image block of its batch-16 step: forward Y (F, n*P) = W (F, R) @ col (R, n*P), the weight
gradient dW (F, R) = dY (F, n*P) @ col.T, and the column gradient dcol (R, n*P) = W.T @ dY, with
R = C*3*3 and P the map's pixels; plus a square 1024 GEMM. The three run interleaved (own, OpenBLAS,
torch, own, ...) under the rules of benchmarks/_bench.py (a pause before each call, median and spread,
load average checked); the table gives GFLOP/s against one core's float32 peak and the ratios
own / OpenBLAS and own / torch (below 1: the own GEMM is faster). The process keeps the environment's
OPENBLAS_CORETYPE (Haswell here: OpenBLAS's AVX2 kernels). Results: benchmarks/RESULTS.md.
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
    _bench.add_common_args(ap, threads_default="1")
    ap.add_argument("--min-seconds", type=float, default=1.0,
                    help="time each row for at least this many seconds of calls (default 1; 0 with --quick)")
    args = ap.parse_args(argv)
    _bench.check_repeats(args.repeats)
    if args.threads != [1]:
        raise SystemExit("gemm.py times single-threaded GEMMs: --threads 1 only")
    return args


ARGS = _parse() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

# (layer, C, F, map side, images in a block): the small model's 3x3 convolutions at batch 16 (the
# blocked path's blocks of images for the large maps, the whole batch for the small ones).
LAYERS = [("conv2", 16, 32, 64, 2), ("conv3", 32, 64, 32, 8), ("conv4", 64, 128, 16, 16),
          ("conv5", 128, 128, 8, 16), ("head conv4", 128, 36, 16, 16)]
QUICK = ("conv3",)


def gemm_rows(quick: bool = False) -> list:
    """(name, M, N, K, ta, tb) of each GEMM to time."""
    rows = [] if quick else [("square", 1024, 1024, 1024, False, False)]
    for name, C, F, side, n in LAYERS:
        if quick and name not in QUICK:
            continue
        R, NP = C * 9, n * side * side
        rows += [(f"{name} forward", F, NP, R, False, False), (f"{name} dW", F, R, NP, False, True),
                 (f"{name} dcol", R, NP, F, True, False)]
    return rows


def operands(M, N, K, ta, tb, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    return (A.T if ta else A), (B.T if tb else B)


def contenders(A, B):
    import torch

    from minissd.nn.threads import cpu_kernels

    k = cpu_kernels()
    C = np.empty((A.shape[0], B.shape[1]), np.float32)
    tA, tB, tC = torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(C)
    return (lambda: k.own_sgemm(A, B, C), lambda: np.matmul(A, B, out=C),
            lambda: torch.mm(tA, tB, out=tC))


def main(args) -> int:
    import torch

    from minissd.nn.threads import cpu_kernels, set_num_threads

    if not cpu_kernels().own_sgemm_supported():
        print("this CPU has no AVX-512F: the own GEMM does not run here (the layers use numpy's BLAS)")
        return 0
    torch.set_num_threads(1)
    set_num_threads(1)
    repeats = args.repeats or (2 if args.quick else 7)
    min_seconds = 0.0 if args.quick else args.min_seconds
    peak = _bench.cpu_peak(1)
    print("# float32 GEMM, one thread: minissd's own (csrc/sgemm.h) vs numpy's OpenBLAS vs torch.mm")
    print(f"\n{_bench.machine_line([1], 'avx512')}; torch {torch.__version__} ({platform.python_version()})")
    print(f"median of {repeats}+ interleaved rounds (until a row's calls add up to {min_seconds:g} s, at most "
          f"{_bench.MAX_ROUNDS}), wall clock; GFLOP/s = 2 M N K / median time; ratios: median of per-round "
          f"ratios [min-max]\n")
    print("| GEMM | M x N x K (A, B) | rounds | own GFLOP/s | OpenBLAS GFLOP/s | torch GFLOP/s | own % of peak "
          "| own / OpenBLAS | own / torch | |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    recorder = _bench.Recorder(args.allow_busy)
    own_vs_torch = []
    with _bench.LoadGuard(1) as guard:
        for name, M, N, K, ta, tb in gemm_rows(args.quick):
            A, B = operands(M, N, K, ta, tb)
            times = _bench.interleaved(contenders(A, B), repeats, args.clock, min_seconds=min_seconds)
            guard.sample()
            flops = 2.0 * M * N * K
            med = [_bench.Stat(t).median for t in times]
            r_blas, r_torch = _bench.ratio_stat(times[0], times[1]), _bench.ratio_stat(times[0], times[2])
            own_vs_torch.append(r_torch.median)
            layout = f"{'A.T' if ta else 'A'}, {'B.T' if tb else 'B'}"
            print(f"| {name} | {M} x {N} x {K} ({layout}) | {len(times[0])} | {flops / med[0] / 1e9:.0f} | "
                  f"{flops / med[1] / 1e9:.0f} | {flops / med[2] / 1e9:.0f} | "
                  f"{100 * flops / med[0] / 1e9 / peak['gflops']:.0f} | {r_blas.fmt(digits=2)} | "
                  f"{r_torch.fmt(digits=2)} | {'BUSY' if guard.crowded else ''} |")
    recorder.note(guard)
    print(f"\n{guard.line()}")
    print(f"own / torch: median {float(np.median(own_vs_torch)):.2f}, worst {max(own_vs_torch):.2f}")
    return recorder.exit_code()


if __name__ == "__main__":
    sys.exit(main(ARGS))

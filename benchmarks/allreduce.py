"""All-reduce time per training step: SSD300-sized and small-model gradients, 1 vs 2 processes.

    python benchmarks/allreduce.py [--procs 1,2] [--sizes ssd300,small] [--repeat 20] [--device cpu]
    python benchmarks/allreduce.py --sizes 1000 --repeat 3          # smoke run, a few seconds

For each process count K the script starts ``mpiexec -n K`` on itself. Every rank builds gradients with
the real parameter shapes of the model (SSD300 on VOC: 26.3 M float32 in 71 arrays, 105 MB; the small
model: 1.1 M in 38 arrays), or one flat array of N elements for an integer size, and times

* ``reduce``: ``comm.allreduce_sum_`` of the packed flat buffer alone (what MPI/NCCL costs);
* ``bucket``: ``GradientBucket.allreduce_()`` (pack every grad, reduce, divide by K, unpack): what a
  training step pays.

Each repeat starts after a barrier; its time is the slowest rank's (the step waits for it). The table
gives the median over repeats, the spread (min - max), and the bandwidth ``bytes / median``; for NCCL's
"bus bandwidth" multiply by 2 (K - 1) / K. With K = 1 nothing is exchanged and both times are ~0: a
single-process run pays nothing for the data-parallel code path. The load average is printed before and
after, because on a shared machine other work inflates the times (MPICH's ranks spin while they wait).
Needs mpi4py and an MPI: ``pip install -e ".[mpi]"``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minissd import backend  # noqa: E402
from minissd import distributed as dist  # noqa: E402

NUM_CLASSES = {"ssd300": 21, "ssd512": 21, "small": 5}  # VOC's 20 + background; the shapes data's 4 + 1


def load() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_sizes(text: str) -> list:
    sizes = []
    for item in text.split(","):
        item = item.strip()
        if item in NUM_CLASSES:
            sizes.append(item)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"--sizes: expected model names ({', '.join(NUM_CLASSES)}) or "
                                             f"positive element counts, got {item!r}")
    return sizes


def parse_procs(text: str) -> list:
    try:
        procs = [int(x) for x in text.split(",")]
    except ValueError:
        procs = []
    if not procs or min(procs) < 1:
        raise argparse.ArgumentTypeError(f"--procs: expected positive integers like 1,2, got {text!r}")
    return procs


class GradHolder:
    """Just the ``named_parameters`` protocol, with the shapes of a model's parameters."""

    def __init__(self, shapes, xp, rng):
        self.entries = []
        for name, shape in shapes:
            p = xp.asarray(rng.standard_normal(shape, dtype=np.float32))
            self.entries.append((name, p, p.copy()))

    def named_parameters(self):
        yield from self.entries


def shapes_of(size) -> tuple[str, list]:
    if isinstance(size, int):
        return f"flat {size:,}", [("flat", (size,))]
    from minissd.model.ssd import build_model

    model = build_model(size, NUM_CLASSES[size], np.random.default_rng(0))
    shapes = [(name, p.shape) for name, p, _ in model.named_parameters()]
    return f"{size} ({len(shapes)} arrays)", shapes


def worker(args) -> int:
    """Runs under mpiexec: time the all-reduce of each size; rank 0 prints one JSON line per size."""
    comm = dist.get_communicator(args.device)
    xp = backend.xp_for(args.device)
    rng = np.random.default_rng([0, comm.rank])
    for size in args.sizes:
        label, shapes = shapes_of(size)
        holder = GradHolder(shapes, xp, rng)
        bucket = dist.GradientBucket(holder, comm, average=True)
        flat = bucket.buffer
        flat[...] = 1.0
        cases = {"reduce": lambda buf=flat: comm.allreduce_sum_(buf), "bucket": bucket.allreduce_}
        result = {"size": label, "elements": int(flat.size), "bytes": int(flat.nbytes), "procs": comm.size}
        for case, fn in cases.items():
            times = []
            for i in range(args.warmup + args.repeat):
                comm.barrier()
                t0 = time.perf_counter()
                fn()
                backend.synchronize(flat)
                dt = comm.allreduce_scalar(time.perf_counter() - t0, "max")
                if i >= args.warmup:
                    times.append(dt)
            result[case] = times
        if comm.rank == 0:
            print("RESULT " + json.dumps(result), flush=True)
    comm.close()
    return 0


def fmt_ms(t: float) -> str:
    return f"{t * 1e3:.3f}" if t < 0.01 else f"{t * 1e3:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=parse_procs, default=[1, 2], help="process counts (default 1,2)")
    parser.add_argument("--sizes", type=parse_sizes, default=["ssd300", "small"],
                        help="ssd300, small, ssd512 or element counts, comma-separated (default ssd300,small)")
    parser.add_argument("--repeat", type=int, default=20, help="timed repeats (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repeats first (default 3)")
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu",
                        help="cpu: MPI over NumPy buffers; cuda: NCCL over CuPy buffers (one GPU per rank)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mpiexec job (default 600)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error(f"--repeat must be >= 1 and --warmup >= 0, got {args.repeat} and {args.warmup}")
    if args.worker:
        return worker(args)

    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print(f"allreduce.py: mpi4py is not installed; {dist.MPI_INSTALL_HINT}", file=sys.stderr)
        return 2
    mpiexec = dist.find_mpiexec()
    if mpiexec is None:
        print("allreduce.py: no mpiexec beside python or on PATH (pip install mpich)", file=sys.stderr)
        return 2

    print(f"# benchmarks/allreduce.py  ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}, {args.device}, "
          f"median of {args.repeat} after {args.warmup} warm-up)")
    print(f"# load average before: {load()}\n")
    print("| gradients | MB | processes | reduce ms (min - max) | bucket ms (min - max) | reduce GB/s |")
    print("|---|---|---|---|---|---|")
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCHER_MARKER_VARS}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    sizes = ",".join(str(s) for s in args.sizes)
    failed = 0
    for k in args.procs:
        cmd = [mpiexec, "-n", str(k), sys.executable, os.path.abspath(__file__), "--worker", "--sizes", sizes,
               "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--device", args.device]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"| mpiexec -n {k} | timed out after {args.timeout:.0f} s | | | | |")
            failed += 1
            continue
        if proc.returncode != 0:
            print(f"mpiexec -n {k} exited {proc.returncode}:\n{proc.stderr[-2000:]}", file=sys.stderr)
            failed += 1
            continue
        for line in proc.stdout.splitlines():
            if not line.startswith("RESULT "):
                continue
            r = json.loads(line[len("RESULT "):])
            red, buck = np.array(r["reduce"]), np.array(r["bucket"])
            gbs = r["bytes"] / np.median(red) / 1e9 if k > 1 else float("nan")
            print(f"| {r['size']} | {r['bytes'] / 1e6:.1f} | {k} | {fmt_ms(np.median(red))} "
                  f"({fmt_ms(red.min())} - {fmt_ms(red.max())}) | {fmt_ms(np.median(buck))} "
                  f"({fmt_ms(buck.min())} - {fmt_ms(buck.max())}) | "
                  f"{'-' if k == 1 else f'{gbs:.2f}'} |", flush=True)
    print(f"\n# load average after: {load()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared rules for the A/B benchmarks (benchmarks/conv.py, benchmarks/model.py; usable by the others).

A figure that compares minissd with a reference must not flatter either side, so every script that
imports this module follows the same rules:

* Interleaved repeats. The contenders run in turn, A, B, A, B, ..., after one untimed warm-up call
  each, so that a change in the machine's load or clock hits both alike. A figure is the median of
  its repeats, printed with its spread (min-max); a ratio is the median of the per-round ratios A/B,
  also with its min-max.
* The machine must be quiet. The 1-minute load average is printed before and after every table. It
  counts runnable processes, ours included, so the threshold is ``0.5 + threads in use``: a run with
  2 threads accepts a load of up to 2.5. Because that average lags, the scripts also sample the
  runnable-task count between rows (another task runnable in over a quarter of the samples is busy
  too: one other job is enough to make PyTorch's spinning OpenMP threads several times slower).
  When the load before or after a table is above it, every
  row of that table is marked ``BUSY`` and the script exits with status 3 after printing, unless
  ``--allow-busy`` was given (then the rows are still marked). A BUSY figure is not to be recorded.
* Throughput next to the peak. `cpu_peak` gives the machine's fp32 peak as
  ``cores x FMA lanes x FMA units x 2 flops x clock``: FMA lanes from /proc/cpuinfo's flags (16 fp32
  lanes with avx512f, 8 with avx2+fma, and 8 on AMD Zen 4, which runs AVX-512 on 256-bit pipes), 2 FMA
  units per core (true of Intel server cores with AVX-512 since Skylake-SP and of AMD Zen 2-5), and the clock measured
  by timing a chain of dependent one-cycle integer adds (minissd._im2col.add_chain: 16 adds per loop
  trip, best of many half-millisecond trials, so a trip that was descheduled does not count), with
  /proc/cpuinfo's "cpu MHz" as the fallback. The measured clock is the turbo clock of one busy core;
  with every core busy (or running AVX-512) the clock can be lower, so the peak is an upper bound.

Timing clock: ``--clock wall`` (default; what a user waits for) or ``--clock cpu`` (process CPU time,
for profiling on a busy machine: right for one thread, and it undercounts a pool whose threads sleep
against one whose threads spin, so it is not for comparing multi-threaded figures).

``python benchmarks/_bench.py`` prints the machine line (clock, peak, load, BLAS kernel);
``python benchmarks/_bench.py --blas-coretype`` measures what OPENBLAS_CORETYPE=Haswell costs numpy's
sgemm (two child processes, one with the variable set and one with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset, run alternately; the kernel each loaded is read with threadpoolctl).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time

BUSY_EXIT = 3


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def thread_list(text: str) -> list:
    """"1,2" -> [1, 2] (argparse type): positive ints, each once, in the given order."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be a comma-separated list of ints, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--threads must list positive ints, got {text!r}")
    return list(dict.fromkeys(values))


def add_common_args(ap: argparse.ArgumentParser, threads_default: str = "2,1") -> None:
    """The options every A/B script shares."""
    ap.add_argument("--quick", action="store_true", help="smoke run: few shapes, 2 repeats (seconds)")
    ap.add_argument("--threads", type=thread_list, default=thread_list(threads_default),
                    help=f"thread counts to run, comma-separated (default {threads_default})")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds per row")
    ap.add_argument("--allow-busy", action="store_true",
                    help="exit 0 even when the load average was above the threshold (rows still say BUSY)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time (default) or process CPU time (profiling on a busy machine, 1 thread)")
    ap.add_argument("--gemm", choices=("auto", "blas", "avx512"), default=None,
                    help="minissd's float32 GEMM (minissd.nn.threads.set_gemm): numpy's OpenBLAS or the own "
                         "AVX-512 kernel (default: $MINISSD_GEMM, else auto: avx512 where the CPU has AVX-512F)")


def use_gemm(kind) -> str:
    """Set minissd's float32 GEMM (None: leave the default); returns a phrase for the header."""
    from minissd.nn.threads import get_gemm, set_gemm

    use = set_gemm(kind) if kind else get_gemm()
    what = "own AVX-512 kernel, csrc/sgemm.h" if use == "avx512" else "numpy's BLAS"
    return f"minissd float32 GEMM: {use} ({what})"


def check_repeats(n, what="--repeats"):
    if n is not None and n < 1:
        raise SystemExit(f"{what} must be >= 1, got {n}")


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------
def load1() -> float:
    """The 1-minute load average (runnable + uninterruptible processes, averaged)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return float("nan")


def busy_threshold(threads: int) -> float:
    """Load above which a run with ``threads`` threads is 'busy': 0.5 + threads (our own threads count)."""
    return 0.5 + int(threads)


def others_running() -> int:
    """Runnable threads of OTHER processes on the machine now (state R in /proc/PID/task/*/stat); -1
    where /proc is unreadable. The 1-minute average lags by a minute: a job that starts in the middle of
    a table shows here at once. This process's own threads are left out: PyTorch's OpenMP workers
    spin for a while after each call, so /proc/loadavg's runnable count (field 4) is rarely zero while
    the benchmark runs, even on an idle machine."""
    me = os.getpid()
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return -1
    running = 0
    for pid in pids:
        if pid == me:
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue   # gone, or not ours to read
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            running += state == "R"
    return running


class LoadGuard:
    """Load average before and after a block of measurements; ``busy`` when either is over the
    threshold (NaN, i.e. unknown, counts as busy), or when `sample` (call it between rows, while this
    process's pool threads sleep) saw another runnable task in more than a quarter of its samples."""

    def __init__(self, threads: int):
        self.threads = int(threads)
        self.threshold = busy_threshold(threads)
        self.before = self.after = None
        self.samples = []

    def sample(self) -> None:
        self.samples.append(others_running())

    @property
    def crowded(self) -> bool:
        seen = [v for v in self.samples if v >= 0]
        return bool(seen) and sum(v > 0 for v in seen) > len(seen) / 4

    def __enter__(self):
        self.before = load1()
        return self

    def __exit__(self, *exc):
        self.after = load1()
        return False

    @property
    def busy(self) -> bool:
        vals = [v for v in (self.before, self.after) if v is not None]
        return any(not (v <= self.threshold) for v in vals) or self.crowded

    def line(self) -> str:
        after = "n/a" if self.after is None else f"{self.after:.2f}"
        verdict = "BUSY: do not record" if self.busy else "quiet"
        seen = [v for v in self.samples if v >= 0]
        others = (f"; another task runnable in {sum(v > 0 for v in seen)} of {len(seen)} samples between rows"
                  if seen else "")
        return (f"load average (1 min) before {self.before:.2f}, after {after}; threshold "
                f"{self.threshold:.1f} (0.5 + {self.threads} threads){others}: {verdict}")


class Recorder:
    """Collects the busy verdicts of a run; `exit_code` is BUSY_EXIT if any table was busy."""

    def __init__(self, allow_busy: bool):
        self.allow_busy = bool(allow_busy)
        self.busy_tables = 0

    def note(self, guard: LoadGuard) -> None:
        if guard.busy:
            self.busy_tables += 1

    def exit_code(self) -> int:
        if self.busy_tables and not self.allow_busy:
            print(f"\n{self.busy_tables} table(s) measured on a busy machine: rows marked BUSY, nothing to "
                  f"record (exit {BUSY_EXIT}; --allow-busy exits 0).", file=sys.stderr)
            return BUSY_EXIT
        return 0


# --------------------------------------------------------------------------------------------------
# Interleaved A/B timing
# --------------------------------------------------------------------------------------------------
def timer(clock: str):
    if clock == "wall":
        return time.perf_counter
    if clock == "cpu":
        return time.process_time
    raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")


#: Seconds of sleep before each timed call. PyTorch's OpenMP workers spin for a while after each
#: parallel region before they sleep; timed right after a torch call, a 2-thread minissd call shared both
#: cores with them (the small model's 8x8 head convs read 2.0-2.2x torch's time back to back, 1.4x with
#: the pause). The pause lets either side's leftover threads go idle before the other side is timed.
SETTLE_S = 0.02


#: Most rounds `interleaved` adds for ``min_seconds`` (a row of 1 ms would otherwise take thousands).
MAX_ROUNDS = 61


def rounds_for(repeats: int, round_seconds: float, min_seconds: float, max_rounds: int = MAX_ROUNDS) -> int:
    """Rounds to time: enough that the rounds' calls (``round_seconds`` each round, all contenders
    together, pauses excluded) add up to ``min_seconds``, capped at ``max_rounds``; never fewer than
    ``repeats``."""
    if min_seconds <= 0:
        return repeats
    need = math.ceil(min_seconds / max(round_seconds, 1e-9))
    return max(repeats, min(max_rounds, need))


#: Back-to-back calls of one side per round (`interleaved`'s ``burst``): the first ``BURST[0]`` untimed,
#: then ``BURST[1]`` timed, their median the round's time. Measured on a 2-core Zen 5 VM (session 6,
#: benchmarks/RESULTS.md): a 2-thread minissd conv call right after a torch call ran 12.2 ms with
#: torch's OpenMP workers still spinning (20 ms after the call) and 8.6 ms with OMP_WAIT_POLICY=passive,
#: while torch itself, called after a 0.2 s pause, took 18.4 ms instead of 6.6: a single call after a
#: pause times the other side's leftover threads or a cold start, not the kernels. In bursts each side
#: is timed warm and alone, as in a training loop; the sides still alternate round by round.
BURST = (2, 3)


def interleaved(fns, repeats: int, clock: str = "wall", warmup: int = 1, settle: float | None = None,
                min_seconds: float = 0.0, max_rounds: int = MAX_ROUNDS, burst=None):
    """Seconds per call of each function in ``fns``, measured in rounds: in each round each function in
    turn, after a pause of ``settle`` seconds (default `SETTLE_S`), is called ``burst[0]`` times untimed
    and ``burst[1]`` times timed, back to back (the round's time: the median of those; ``burst`` None is
    (0, 1), one timed call; `BURST` is what the conv and model tables use), after ``warmup`` untimed
    rounds. Returns one list of times per function: ``repeats`` of them, or more when
    ``min_seconds`` asks for it (`rounds_for`, from the last warm-up round's time): short calls are
    noisy on a small VM (a few-millisecond call spreads 1.5-3x between rounds), and their median
    settles only with more rounds; a long call keeps ``repeats``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    untimed, timed = (0, 1) if burst is None else (int(burst[0]), int(burst[1]))
    if untimed < 0 or timed < 1:
        raise ValueError(f"burst must be (untimed >= 0, timed >= 1), got {burst}")
    settle = SETTLE_S if settle is None else float(settle)
    now = timer(clock)
    round_seconds = 0.0
    for _ in range(max(2, warmup) if min_seconds else warmup):   # the last warm-up round is timed
        t0 = now()
        for f in fns:
            for _ in range(untimed + timed):
                f()
        round_seconds = now() - t0
    repeats = rounds_for(repeats, round_seconds, min_seconds, max_rounds)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            if settle > 0:
                time.sleep(settle)
            for _ in range(untimed):
                f()
            calls = []
            for _ in range(timed):
                t0 = now()
                f()
                calls.append(now() - t0)
            times[i].append(statistics.median(calls))
    return times


class Stat:
    """Median and spread of a list of samples."""

    def __init__(self, samples):
        s = sorted(float(v) for v in samples)
        if not s:
            raise ValueError("Stat of no samples")
        self.samples = s
        self.median = statistics.median(s)
        self.min, self.max = s[0], s[-1]
        if len(s) >= 4:
            q = statistics.quantiles(s, n=4, method="inclusive")
            self.q1, self.q3 = q[0], q[2]
        else:
            self.q1, self.q3 = self.min, self.max

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        """'median [min-max]' with every value times ``scale``."""
        f = f"{{:.{digits}f}}"
        return f"{f.format(self.median * scale)} [{f.format(self.min * scale)}-{f.format(self.max * scale)}]"


def ratio_stat(a, b) -> Stat:
    """Per-round ratios a[i] / b[i] (the rounds are interleaved, so each pair saw the same machine)."""
    return Stat([x / y for x, y in zip(a, b, strict=True)])


# --------------------------------------------------------------------------------------------------
# Machine: clock, FMA width, peak
# --------------------------------------------------------------------------------------------------
def cpuinfo() -> dict:
    """Model name, flags and the first 'cpu MHz' of /proc/cpuinfo (empty values where unreadable)."""
    info = {"model": platform.processor() or platform.machine(), "flags": set(), "mhz": None, "vendor": "",
            "family": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
                    info["model"] = val.strip()
                elif key == "flags" and not info["flags"]:
                    info["flags"] = set(val.split())
                elif key == "cpu MHz" and info["mhz"] is None:
                    info["mhz"] = float(val)
                elif key == "vendor_id" and not info["vendor"]:
                    info["vendor"] = val.strip()
                elif key == "cpu family" and info["family"] is None:
                    info["family"] = int(val)
    except OSError:
        pass
    return info


#: AMD Zen 4 (family 25 with AVX-512): 512-bit instructions run on its two 256-bit FMA pipes, so its
#: fp32 peak is that of AVX2 (8 lanes x 2 units); Zen 5 (family 26) has full-width 512-bit pipes.
HALF_WIDTH_AVX512 = {("AuthenticAMD", 25)}


def fma_lanes(flags, vendor: str = "", family=None) -> int:
    """fp32 lanes one FMA unit retires per cycle: 16 with AVX-512F (8 on Zen 4, whose AVX-512 is split
    over 256-bit pipes), 8 with AVX2+FMA, else 0 (no FMA)."""
    if "avx512f" in flags:
        return 8 if (vendor, family) in HALF_WIDTH_AVX512 else 16
    if "avx2" in flags and "fma" in flags:
        return 8
    return 0


def measured_clock_ghz(trials: int = 31, loops: int = 100_000):
    """The core clock in GHz from a timed chain of dependent one-cycle adds: the fastest of ``trials``
    runs of 16*``loops`` adds (about half a millisecond each). None where the kernel is unavailable."""
    try:
        from minissd._im2col import add_chain
    except ImportError:
        return None
    if add_chain(1) < 0:
        return None
    add_chain(loops)                        # wake the core up
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        cycles = add_chain(loops)
        best = min(best, time.perf_counter() - t0)
    return cycles / best / 1e9


def cpu_peak(cores: int, clock_ghz=None) -> dict:
    """fp32 peak of ``cores`` cores: cores x FMA lanes x 2 FMA units x 2 flops x clock (GFLOP/s).

    Returns a dict: gflops (None if unknown), clock_ghz, clock_source, lanes, how (one line)."""
    info = cpuinfo()
    lanes = fma_lanes(info["flags"], info["vendor"], info["family"])
    source = "measured (dependent-add chain)"
    if clock_ghz is None:
        clock_ghz = measured_clock_ghz()
    if clock_ghz is None and info["mhz"]:
        clock_ghz, source = info["mhz"] / 1000.0, "/proc/cpuinfo cpu MHz"
    isa = "AVX-512" if lanes == 16 else ("AVX2" if lanes == 8 else "no FMA")
    if lanes == 8 and "avx512f" in info["flags"]:
        isa = "AVX-512 on 256-bit pipes (Zen 4)"
    if not lanes or not clock_ghz:
        return {"gflops": None, "clock_ghz": clock_ghz, "clock_source": source, "lanes": lanes,
                "how": f"peak unknown ({isa}, clock {clock_ghz})"}
    gflops = cores * lanes * 2 * 2 * clock_ghz
    how = (f"fp32 peak {gflops:.0f} GFLOP/s = {cores} core(s) x {lanes} lanes ({isa}) x 2 FMA units x 2 flops "
           f"x {clock_ghz:.2f} GHz ({source})")
    return {"gflops": gflops, "clock_ghz": clock_ghz, "clock_source": source, "lanes": lanes, "how": how}


def conv_flops(N, C, F, OH, OW, KH, KW, input_grad=True) -> dict:
    """Floating-point operations of a convolution (multiply + add = 2): forward 2*N*F*OH*OW*C*KH*KW;
    backward the same again for dW and again for dx (dx skipped when ``input_grad`` is False)."""
    fwd = 2 * N * F * OH * OW * C * KH * KW
    return {"forward": fwd, "backward": fwd * (2 if input_grad else 1), "total": fwd * (3 if input_grad else 2)}


def blas_info() -> str:
    """numpy's BLAS and the kernel it loaded (threadpoolctl), one line."""
    try:
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS: threadpoolctl not installed (pip install threadpoolctl)"
    rows = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not rows:
        return "BLAS: none found"
    i = rows[0]
    return (f"BLAS: {i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')} "
            f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")


def machine_line(threads_list, gemm=None) -> str:
    """The machine, its peak, numpy's BLAS and minissd's GEMM (``gemm``: the --gemm option, set here)."""
    import numpy as np

    info = cpuinfo()
    peak = cpu_peak(1)
    cores = os.cpu_count() or 1
    return (f"{info['model']}, {cores} CPUs; {peak['how'].replace('1 core(s)', 'per core: 1 core')}; "
            f"peaks used: " + ", ".join(f"{t} thread(s) {cpu_peak(t, peak['clock_ghz'])['gflops'] or 0:.0f} GFLOP/s"
                                        for t in threads_list)
            + f"; numpy {np.__version__}; {blas_info()}; {use_gemm(gemm)}")


# --------------------------------------------------------------------------------------------------
# What OPENBLAS_CORETYPE=Haswell costs (child processes: the variable is read when OpenBLAS loads)
# --------------------------------------------------------------------------------------------------
GEMM_SHAPES = [(128, 576, 4096), (64, 1152, 16384), (512, 4608, 722), (24, 1152, 4096)]

_CHILD = r"""
import json, os, sys, time
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np
try:
    from threadpoolctl import threadpool_info
    arch = [i.get("architecture") for i in threadpool_info() if i.get("user_api") == "blas"]
except ImportError:   # optional: the kernel's name is only printed
    arch = []
out = {"arch": arch[0] if arch else None, "gflops": []}
rng = np.random.default_rng(0)
for m, k, n in json.loads(sys.argv[1]):
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), np.float32)
    np.matmul(a, b, out=c)
    best = float("inf")
    for _ in range(int(sys.argv[2])):
        t = time.process_time(); np.matmul(a, b, out=c); best = min(best, time.process_time() - t)
    out["gflops"].append(2 * m * k * n / best / 1e9)
print(json.dumps(out))
"""


def blas_coretype_cost(rounds: int = 3, reps: int = 5, coretype: str = "Haswell") -> list:
    """sgemm GFLOP/s of numpy's OpenBLAS (1 thread, process CPU time, best of ``reps``) with
    OPENBLAS_CORETYPE=``coretype`` and with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, in alternate
    child processes, ``rounds`` each. Returns rows (shape, kernel forced, GFLOP/s forced, kernel
    native, GFLOP/s native) with medians over the rounds."""
    import json

    forced_env = dict(os.environ, OPENBLAS_CORETYPE=coretype)
    native_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    res = {"forced": [], "native": []}
    args = [json.dumps(GEMM_SHAPES), str(reps)]
    for _ in range(rounds):
        for key, env in (("forced", forced_env), ("native", native_env)):
            out = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True,
                                 check=True)
            res[key].append(json.loads(out.stdout))
    rows = []
    for i, shape in enumerate(GEMM_SHAPES):
        f = statistics.median(r["gflops"][i] for r in res["forced"])
        n = statistics.median(r["gflops"][i] for r in res["native"])
        rows.append((shape, res["forced"][0]["arch"], f, res["native"][0]["arch"], n))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="machine line; --blas-coretype: what OPENBLAS_CORETYPE costs")
    ap.add_argument("--blas-coretype", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    print(machine_line([1, 2]))
    if args.blas_coretype:
        with LoadGuard(1) as guard:
            rows = blas_coretype_cost(rounds=args.rounds)
        print("\nnumpy sgemm, 1 thread, GFLOP/s (median of alternate child processes, best of 5 each)")
        print("| M x K x N | OPENBLAS_CORETYPE=Haswell | unset (native) | native / Haswell |")
        print("|---|---:|---:|---:|")
        for (m, k, n), fa, f, na, nv in rows:
            print(f"| {m} x {k} x {n} | {f:.1f} ({fa}) | {nv:.1f} ({na}) | {nv / f:.2f} |")
        print(guard.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

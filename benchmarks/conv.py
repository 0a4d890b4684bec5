"""Conv2d forward + backward, every layer of the small model and of SSD300: minissd against PyTorch.

    python benchmarks/conv.py                       # small model at batch 16 and 32, SSD300 at batch 2;
                                                    # 2 threads, then 1 thread
    python benchmarks/conv.py --threads 1 --only small
    python benchmarks/conv.py --quick --allow-busy  # smoke run: a few small-model layers at batch 2

The layer list is read from the model configs (minissd/model/configs.py), so it is the network's: every
convolution of the trunk and extras, and the heads as the model runs them (one convolution per source
map with 4k + Mk output channels: loc and conf fused, minissd/model/ssd.py), M = 5 for the small model
(the shapes dataset) and 21 for SSD300 (VOC). Layers of identical geometry are timed once and counted
n times in the sum. The first layer is timed as in training: no dL/d(image) on either side.

Both sides compute y, dL/dW, dL/db (and dL/dx) of the same float32 input and upstream gradient. The
rules of benchmarks/_bench.py apply: interleaved rounds (minissd, torch, minissd, ...; at least 7, more
for a short row until its calls add up to --min-seconds, at most 61), each side in a round a burst of
back-to-back calls whose first two are untimed (`_bench.BURST`), medians with
[min-max], the ratio as the median of per-round ratios, the load average before and after each
table (rows marked BUSY and exit status 3 above 0.5 + threads, unless --allow-busy), and GFLOP/s
(forward 2*N*F*OH*OW*C*KH*KW, backward twice that) next to the fp32 peak of the cores in use.

Target on a quiet CPU: ratio <= 1.5 on every layer, 2 threads and 1 thread.
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
    _bench.add_common_args(ap)
    ap.add_argument("--only", choices=["small", "ssd300"], default=None, help="one model's layers only")
    ap.add_argument("--min-seconds", type=float, default=None,
                    help="time each row for at least this many seconds of calls (both sides together), adding "
                         f"rounds up to {_bench.MAX_ROUNDS}: short rows are noisy (default 3; 0 with --quick)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: minissd's CuPy path against torch on the GPU (no peak column)")
    args = ap.parse_args(argv)
    _bench.check_repeats(args.repeats)
    return args


ARGS = _parse() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

from minissd.model.configs import describe, get_config  # noqa: E402

NUM_CLASSES = {"small": 5, "ssd300": 21}       # the shapes dataset (4 + background), VOC (20 + background)
BATCHES = {"small": (16, 32), "ssd300": (2,)}


def model_layers(name: str, num_classes: int) -> list:
    """The model's convolutions as rows (label, C, F, S_in, k, s, p, d, input_grad), identical
    geometries merged (label lists every name, count in ``n``): returns [(row, n)]."""
    config = get_config(name)
    sizes = {r["name"]: r["size"] for r in describe(config)}
    size, channels = config["image_size"], config["in_channels"]
    rows, first = [], True
    for part in ("trunk", "extras"):
        for spec in config[part]:
            if spec["type"] == "conv":
                rows.append((spec["name"], channels, spec["out"], size, spec["kernel"], spec["stride"],
                             spec["padding"], spec["dilation"], not first))
                channels, first = spec["out"], False
            size = sizes[spec["name"]]
    chans = {r["name"]: r["channels"] for r in describe(config)}
    kh = int(config["head_kernel"])
    for s, k in zip(config["sources"], config["boxes_per_location"], strict=True):
        rows.append((f"head {s} (loc+conf)", chans[s], (4 + num_classes) * k, sizes[s], kh, 1, kh // 2, 1, True))
    merged = {}
    for row in rows:
        key = row[1:]
        if key in merged:
            merged[key][0].append(row[0])
            merged[key][1] += 1
        else:
            merged[key] = [[row[0]], 1]
    return [((", ".join(names),) + key, n) for key, (names, n) in merged.items()]


QUICK = {"small": ["conv1", "conv2", "conv5_1, conv5_2", "head conv4 (loc+conf)"]}


def make_pair(row, batch, device="cpu"):
    """Two callables, minissd's and torch's forward+backward of one layer, on the same data."""
    import torch
    import torch.nn.functional as tF

    from minissd.backend import synchronize, xp_for
    from minissd.nn import Conv2d

    _, C, Fo, S, k, s, p, d, input_grad = row
    xp = xp_for(device)
    rng = np.random.default_rng(0)
    conv = Conv2d(C, Fo, k, stride=s, padding=p, dilation=d, rng=rng, input_grad=input_grad)
    conv.params["b"][...] = rng.standard_normal(Fo).astype(np.float32)
    x = rng.standard_normal((batch, C, S, S)).astype(np.float32)
    OH = (S + 2 * p - d * (k - 1) - 1) // s + 1
    dy = rng.standard_normal((batch, Fo, OH, OH)).astype(np.float32)
    W0, b0 = conv.params["W"].copy(), conv.params["b"].copy()
    conv.to(device)
    xd, dyd = xp.asarray(x), xp.asarray(dy)
    on_gpu = device == "cuda"
    tdev = "cuda" if on_gpu else "cpu"
    xt = torch.tensor(x, device=tdev, requires_grad=input_grad)
    wt = torch.tensor(W0, device=tdev, requires_grad=True)
    bt = torch.tensor(b0, device=tdev, requires_grad=True)
    dyt = torch.tensor(dy, device=tdev)

    def ours():
        conv.zero_grad()
        conv.forward(xd)
        conv.backward(dyd)
        synchronize(xd)

    def theirs():
        xt.grad = wt.grad = bt.grad = None
        tF.conv2d(xt, wt, bt, stride=s, padding=p, dilation=d).backward(dyt)
        if on_gpu:
            torch.cuda.synchronize()

    flops = _bench.conv_flops(batch, C, Fo, OH, OH, k, k, input_grad)["total"]
    return ours, theirs, flops, conv


def run_table(model, rows, batch, threads, repeats, clock, peak, recorder, device="cpu", min_seconds=0.0):
    """Time every row; print the table once the load after it is known (so every row can say BUSY)."""
    lines, tot_a, tot_b, tot_flops, ratios = [], 0.0, 0.0, 0, []
    with _bench.LoadGuard(threads) as guard:
        for row, n in rows:
            ours, theirs, flops, conv = make_pair(row, batch, device)
            a, b = _bench.interleaved([ours, theirs], repeats, clock, min_seconds=min_seconds,
                                      burst=_bench.BURST)
            conv.clear_cache()
            sa, sb, r = _bench.Stat(a), _bench.Stat(b), _bench.ratio_stat(a, b)
            ratios.append(r.median)
            tot_a += n * sa.median
            tot_b += n * sb.median
            tot_flops += n * flops
            label, C, Fo, S, k, s, p, d, input_grad = row
            geo = f"{C} -> {Fo} @ {S}, {k}/{s}/{p}/{d}" + ("" if input_grad else ", no dx")
            pct = f"{100 * flops / sa.median / 1e9 / peak:.0f}" if peak else "n/a"
            lines.append(f"| {label} | {geo} | {n} | {len(a)} | {sa.fmt(1e3)} | {sb.fmt(1e3)} | {r.fmt(1, 2)} | "
                         f"{flops / sa.median / 1e9:.0f} | {flops / sb.median / 1e9:.0f} | {pct} |")
            guard.sample()
            print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    recorder.note(guard)
    mark = " BUSY |" if guard.busy else " |"
    pct = f"{100 * tot_flops / tot_a / 1e9 / peak:.0f}" if peak else "n/a"
    lines.append(f"| sum (x n) | | | | {tot_a * 1e3:.1f} | {tot_b * 1e3:.1f} | {tot_a / tot_b:.2f} | "
                 f"{tot_flops / tot_a / 1e9:.0f} | {tot_flops / tot_b / 1e9:.0f} | {pct} |")
    print(f"\n### {model}, batch {batch}, {threads} thread(s)\n")
    print("| layer | C -> F @ in, k/s/p/d | n | rounds | minissd ms | torch ms | minissd / torch | "
          "minissd GFLOP/s | torch GFLOP/s | minissd % of peak | |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for line in lines:
        print(line + mark)
    print(f"\n{guard.line()}; worst ratio {max(ratios):.2f}, median {float(np.median(ratios)):.2f}", flush=True)
    return ratios


def main(args) -> int:
    try:
        import torch
    except ImportError:
        print("benchmarks/conv.py compares against PyTorch: pip install torch", file=sys.stderr)
        return 2
    from minissd.nn import set_num_threads

    repeats = args.repeats or (2 if args.quick else 7)
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.0 if args.quick else 3.0)
    models = [args.only] if args.only else ["small", "ssd300"]
    if args.quick:
        models = ["small"]
    print(f"# minissd Conv2d vs torch.nn.functional.conv2d, forward + backward, float32, {args.device}")
    print(f"\n{_bench.machine_line(args.threads, args.gemm)}; torch {torch.__version__} ({platform.python_version()})")
    more = (f" (more for short rows: until a row's calls add up to {min_seconds:g} s, at most {_bench.MAX_ROUNDS})"
            if min_seconds else "")
    print(f"each round: per side {_bench.BURST[0]} untimed calls, then the median of {_bench.BURST[1]} timed ones, "
          f"back to back (_bench.BURST: each side warm and alone)")
    print(f"median [min-max] of {repeats} interleaved rounds{more}, {args.clock} clock; ratio = median of per-round "
          f"ratios [min-max]; GFLOP/s = (forward + backward flops) / median time")
    recorder = _bench.Recorder(args.allow_busy)
    clock = _bench.cpu_peak(1)["clock_ghz"] if args.device == "cpu" else None
    all_ratios = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        set_num_threads(threads)
        peak = _bench.cpu_peak(threads, clock)["gflops"] if args.device == "cpu" else None
        for model in models:
            rows = model_layers(model, NUM_CLASSES[model])
            if args.quick:
                rows = [(r, n) for r, n in rows if r[0] in QUICK[model]]
            for batch in ((2,) if args.quick else BATCHES[model]):
                all_ratios += run_table(model, rows, batch, threads, repeats, args.clock, peak, recorder,
                                        args.device, min_seconds)
    print(f"\nall tables: worst ratio {max(all_ratios):.2f}, median {float(np.median(all_ratios)):.2f} "
          f"(target on a quiet CPU: every ratio <= 1.5)")
    return recorder.exit_code()


if __name__ == "__main__":
    sys.exit(main(ARGS))

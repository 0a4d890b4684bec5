"""Conv2d forward + backward: minissd (im2col + GEMM) against torch.nn.functional.conv2d, same threads.

    python benchmarks/conv.py              # SSD300 VGG16 shapes at batch 2, small-model shapes at 16, 32
    python benchmarks/conv.py --quick      # a few shapes, fewer repeats (well under a minute)
    python benchmarks/conv.py --threads 1  # single-threaded (OpenBLAS, minissd kernels and torch)

For every shape both implementations compute y, dL/dx, dL/dW and dL/db from the same float32 input
and upstream gradient. The two are timed alternately (so a busy machine slows both alike); the table
shows the median over repeats and the ratio minissd / torch of the medians. Target on the CPU: ratio
<= 2 on every shape. With a CUDA GPU and CuPy, ``--device cuda`` times minissd's CuPy path instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes, 3 repeats")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for OpenBLAS, minissd's kernels and torch (default: all cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per shape (default 3)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--only", choices=["vgg", "small"], default=None, help="one table only")
    return ap.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    # before numpy loads OpenBLAS: its thread pool size is read once, from the environment
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)

import numpy as np  # noqa: E402

from minissd.backend import synchronize, xp_for  # noqa: E402
from minissd.nn import Conv2d, set_num_threads  # noqa: E402

# (name, C, F, size, kernel, stride, padding, dilation)
SSD300_VGG16 = [
    ("conv1_1", 3, 64, 300, 3, 1, 1, 1),
    ("conv1_2", 64, 64, 300, 3, 1, 1, 1),
    ("conv2_1", 64, 128, 150, 3, 1, 1, 1),
    ("conv2_2", 128, 128, 150, 3, 1, 1, 1),
    ("conv3_1", 128, 256, 75, 3, 1, 1, 1),
    ("conv3_2", 256, 256, 75, 3, 1, 1, 1),
    ("conv4_1", 256, 512, 38, 3, 1, 1, 1),
    ("conv4_2", 512, 512, 38, 3, 1, 1, 1),
    ("conv5_1", 512, 512, 19, 3, 1, 1, 1),
    ("fc6 (d6)", 512, 1024, 19, 3, 1, 6, 6),
    ("fc7 (1x1)", 1024, 1024, 19, 1, 1, 0, 1),
    ("conv8_1", 1024, 256, 19, 1, 1, 0, 1),
    ("conv8_2 (s2)", 256, 512, 19, 3, 2, 1, 1),
    ("conv9_2 (s2)", 128, 256, 10, 3, 2, 1, 1),
    ("conv10_2 (p0)", 128, 256, 5, 3, 1, 0, 1),
    ("head conv4_3 conf", 512, 84, 38, 3, 1, 1, 1),
]
SMALL = [
    ("conv1", 3, 16, 128, 3, 1, 1, 1),
    ("conv2", 16, 32, 64, 3, 1, 1, 1),
    ("conv3", 32, 64, 32, 3, 1, 1, 1),
    ("conv4", 64, 128, 16, 3, 1, 1, 1),
    ("conv5_x", 128, 128, 8, 3, 1, 1, 1),
    ("conv6 (s2)", 128, 128, 8, 3, 2, 1, 1),
    ("head conv4 conf", 128, 24, 16, 3, 1, 1, 1),
]
QUICK_VGG = ["conv2_2", "conv4_2", "fc6 (d6)", "fc7 (1x1)", "conv8_2 (s2)"]
QUICK_SMALL = ["conv1", "conv2", "conv3", "conv4", "conv5_x"]


def time_pair(shape, batch, repeats, device="cpu"):
    """Median seconds of minissd and torch forward+backward on one layer shape."""
    import torch
    import torch.nn.functional as F

    name, C, Fo, S, k, s, p, d = shape
    xp = xp_for(device)
    rng = np.random.default_rng(0)
    conv = Conv2d(C, Fo, k, stride=s, padding=p, dilation=d, rng=rng)
    conv.params["b"][...] = rng.standard_normal(Fo).astype(np.float32)
    x = rng.standard_normal((batch, C, S, S)).astype(np.float32)
    OH = (S + 2 * p - d * (k - 1) - 1) // s + 1
    dy = rng.standard_normal((batch, Fo, OH, OH)).astype(np.float32)
    conv.to(device)
    xd, dyd = xp.asarray(x), xp.asarray(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(np.asarray(conv.params["W"].get() if device == "cuda" else conv.params["W"]),
                      requires_grad=True)
    bt = torch.tensor(np.asarray(conv.params["b"].get() if device == "cuda" else conv.params["b"]),
                      requires_grad=True)
    dyt = torch.tensor(dy)
    if device == "cuda" and torch.cuda.is_available():
        xt, wt, bt, dyt = (t.detach().cuda().requires_grad_(t.requires_grad) for t in (xt, wt, bt, dyt))

    def ours():
        conv.forward(xd)
        conv.backward(dyd)
        synchronize(xd)

    torch_on_device = device == "cpu" or torch.cuda.is_available()

    def theirs():
        if not torch_on_device:           # a CPU-only torch cannot be the GPU reference
            return
        xt.grad = wt.grad = bt.grad = None
        F.conv2d(xt, wt, bt, stride=s, padding=p, dilation=d).backward(dyt)
        if device == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize()

    ours()
    theirs()                              # warm-up: buffers, kernels, thread pools
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours()
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs()
        b.append(time.perf_counter() - t0)
    conv.clear_cache()
    return float(np.median(a)), (float(np.median(b)) if torch_on_device else float("nan"))


def run_table(title, shapes, batch, repeats, device):
    print(f"\n{title}, batch {batch}")
    head = f"| {'layer':<18} | {'C -> F @ size, k/s/p/d':<26} | {'minissd ms':>10} | {'torch ms':>9} | {'ratio':>5} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    ratios, tot_a, tot_b = [], 0.0, 0.0
    for shape in shapes:
        name, C, Fo, S, k, s, p, d = shape
        a, b = time_pair(shape, batch, repeats, device)
        tot_a += a
        tot_b += b
        if b == b:                        # not NaN
            ratios.append(a / b)
        geo = f"{C} -> {Fo} @ {S}, {k}/{s}/{p}/{d}"
        print(f"| {name:<18} | {geo:<26} | {a * 1e3:10.1f} | {b * 1e3:9.1f} | {a / b:5.2f} |", flush=True)
    print(f"| {'sum':<18} | {'':<26} | {tot_a * 1e3:10.1f} | {tot_b * 1e3:9.1f} | {tot_a / tot_b:5.2f} |")
    return ratios


def main(args) -> int:
    try:
        import torch
    except ImportError:
        print("benchmarks/conv.py compares against PyTorch: pip install torch", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    repeats = args.repeats or 3
    import platform

    print(f"minissd Conv2d vs torch.nn.functional.conv2d, forward + backward (dx, dW, db), float32, "
          f"{args.device}, {args.threads} thread(s), median of {repeats}; "
          f"numpy {np.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    vgg = [s for s in SSD300_VGG16 if not args.quick or s[0] in QUICK_VGG]
    small = [s for s in SMALL if not args.quick or s[0] in QUICK_SMALL]
    ratios = []
    if args.only in (None, "vgg"):
        ratios += run_table("SSD300 VGG16 layer shapes", vgg, 2, repeats, args.device)
    if args.only in (None, "small"):
        for batch in ((16,) if args.quick else (16, 32)):
            ratios += run_table("Small CPU model shapes", small, batch, repeats, args.device)
    if ratios:
        print(f"\nworst ratio {max(ratios):.2f}, median ratio {float(np.median(ratios)):.2f} "
              f"(target on the CPU: every ratio <= 2)")
    else:
        print("\n(torch has no CUDA here: minissd times only)")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))

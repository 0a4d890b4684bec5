"""MultiBox loss: minissd's hand-written forward + backward vs the same loss in PyTorch autograd.

    python benchmarks/loss.py [--repeat 7] [--threads 1]

Both sides compute eqs. (1)-(3) of the paper with 3:1 hard negative mining on the same random batch
(float32) and return the loss and both gradients; PyTorch's version sorts each image's background
losses to mine (as ssd.pytorch and torchvision do), minissd's partitions them. Shapes: the small model's
training batch (32, 1524, 5) and SSD300's (32, 8732, 21). Times are the median of ``repeat`` calls after
a warm-up, in process CPU time (the machine may be shared), with torch limited to ``threads`` threads;
minissd's loss is single-threaded NumPy. Ratio = minissd / PyTorch.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minissd.loss import MultiBoxLoss  # noqa: E402

SHAPES = [("small model, batch 32", 32, 1524, 5), ("SSD300, batch 32", 32, 8732, 21)]


def make_batch(rng, n, p, m, pos_fraction=0.01):
    """Random logits/offsets and targets with about ``pos_fraction`` positives per image."""
    loc = rng.standard_normal((n, p, 4)).astype(np.float32)
    conf = rng.standard_normal((n, p, m)).astype(np.float32)
    loc_t = rng.standard_normal((n, p, 4)).astype(np.float32)
    labels = np.where(rng.random((n, p)) < pos_fraction, rng.integers(1, m, (n, p)), 0).astype(np.int64)
    return loc, conf, loc_t, labels


def torch_loss(torch, loc, conf, loc_t, labels, ratio=3.0):
    """The MultiBox loss in PyTorch autograd: returns (loss, d_loc, d_conf)."""
    F = torch.nn.functional
    loc = loc.detach().requires_grad_(True)
    conf = conf.detach().requires_grad_(True)
    pos = labels > 0
    logp = F.log_softmax(conf, dim=2)
    with torch.no_grad():
        bg = (-logp[..., 0]).masked_fill(pos, -float("inf"))
        rank = torch.argsort(torch.sort(-bg, dim=1, stable=True).indices, dim=1)
        n_pos = pos.sum(1)
        k = torch.minimum((n_pos * ratio).long(), pos.shape[1] - n_pos)
        neg = rank < k[:, None]
    sel = pos | neg
    total = (F.nll_loss(logp[sel], labels[sel], reduction="sum")
             + F.smooth_l1_loss(loc[pos], loc_t[pos], beta=1.0, reduction="sum")) / max(int(n_pos.sum()), 1)
    total.backward()
    return float(total.detach()), loc.grad, conf.grad


def median_cpu_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return float(np.median(times))


def one_case(torch, batch, repeat):
    """(minissd seconds, PyTorch seconds, max relative difference of d_conf) for one batch."""
    loc, conf, loc_t, labels = batch
    loss = MultiBoxLoss()

    def ours():
        loss.forward(loc, conf, loc_t, labels)
        return loss.backward()

    tensors = [torch.from_numpy(a) for a in (loc, conf, loc_t, labels)]

    def theirs():
        return torch_loss(torch, *tensors)

    t_ours = median_cpu_time(ours, repeat)
    t_theirs = median_cpu_time(theirs, repeat)
    d_conf = ours()[1]
    ref = theirs()[2].numpy()
    return t_ours, t_theirs, float(np.max(np.abs(d_conf - ref)) / max(np.max(np.abs(ref)), 1e-30))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="timed calls per case (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("benchmarks/loss.py needs PyTorch as the reference: pip install torch==2.13.0", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    print(f"# MultiBox loss forward+backward, float32, median of {args.repeat}, process CPU time")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"torch {torch.__version__} ({args.threads} thread(s))\n")
    print("| batch (N, P, M) | minissd ms | PyTorch autograd ms | ratio | max rel. diff of d_conf |")
    print("|---|---:|---:|---:|---:|")
    for name, n, p, m in SHAPES:
        t_ours, t_theirs, diff = one_case(torch, make_batch(rng, n, p, m), args.repeat)
        print(f"| {name} ({n}, {p}, {m}) | {1e3 * t_ours:.2f} | {1e3 * t_theirs:.2f} | "
              f"{t_ours / t_theirs:.2f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

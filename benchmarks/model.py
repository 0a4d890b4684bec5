"""Whole-network speed: minissd's SSD against the same network in PyTorch (CPU, same thread count).

    python benchmarks/model.py [--quick] [--threads 1] [--repeat 3]

Cases: the small model at batch 32 (the training command's hot loop) and SSD300 at batch 2 (batch 1
with --quick). For each: the forward pass (training mode, as in a training step) and forward +
backward (parameter gradients; neither side computes dL/d(image)), per image. The PyTorch network is
minissd/model/torch_reference.py: the same layers and weights, built from the same config, running on
PyTorch's own CPU convolutions (oneDNN); torch.set_num_threads and minissd's OpenBLAS/OpenMP threads
are set to the same --threads.

Prints a Markdown table of best-of-`repeat` times. The times are process CPU time divided by the
thread count (wall time inflates with other processes on a shared machine; CPU time does not);
compare the ratios, and read the absolute times as a lower bound on wall time.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="SSD300 at batch 1, one repeat (about a minute)")
    p.add_argument("--threads", type=int, default=1, help="threads for both implementations (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed repeats per case, best kept (default 3)")
    p.add_argument("--small-batch", type=int, default=32)
    p.add_argument("--ssd300-batch", type=int, default=None, help="default 2 (1 with --quick)")
    p.add_argument("--skip-ssd300", action="store_true")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # BLAS reads its thread count when numpy loads, so this comes first.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minissd.model import build_model  # noqa: E402


def best_cpu(fn, repeat, threads):
    """Best process CPU time / threads over ``repeat`` calls after one warm-up, in seconds."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append((time.process_time() - t) / threads)
    return min(times)


def bench_case(name, num_classes, batch, repeat, threads):
    import torch

    from minissd.model.torch_reference import build_torch_reference

    rng = np.random.default_rng(0)
    model = build_model(name, num_classes, rng)
    model.input_grad = False
    ref = build_torch_reference(model.config, num_classes)
    ref.load_minissd_state(model.state_dict())
    s = model.image_size
    x = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    loc, conf = model.forward(x)
    d_loc = rng.standard_normal(loc.shape).astype(np.float32)
    d_conf = rng.standard_normal(conf.shape).astype(np.float32)
    xt, d_loc_t, d_conf_t = torch.as_tensor(x), torch.as_tensor(d_loc), torch.as_tensor(d_conf)

    def ours_fwd():
        model.forward(x)

    def ours_step():
        model.zero_grad()
        model.forward(x)
        model.backward(d_loc, d_conf)

    def torch_fwd():
        with torch.no_grad():
            ref(xt)

    def torch_step():
        for p in ref.parameters():
            p.grad = None
        lo, co = ref(xt)
        torch.autograd.backward([lo, co], [d_loc_t, d_conf_t])

    rows = []
    for label, ours, theirs in (("forward", ours_fwd, torch_fwd), ("forward+backward", ours_step, torch_step)):
        t_ours = best_cpu(ours, repeat, threads) / batch
        t_torch = best_cpu(theirs, repeat, threads) / batch
        rows.append((name, batch, label, t_ours * 1e3, t_torch * 1e3, t_ours / t_torch))
    return rows


def main(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from minissd.nn.layers import set_num_threads

    set_num_threads(args.threads)
    cases = [("small", 5, args.small_batch, args.repeat)]
    if not args.skip_ssd300:
        batch = args.ssd300_batch or (1 if args.quick else 2)
        cases.append(("ssd300", 21, batch, 1 if args.quick else max(1, args.repeat - 1)))
    print(f"# minissd vs PyTorch {torch.__version__} (CPU), {args.threads} thread(s), numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print()
    print("| model | batch | pass | minissd ms/img | PyTorch ms/img | minissd / PyTorch |")
    print("|---|---:|---|---:|---:|---:|")
    for name, m, batch, repeat in cases:
        for row in bench_case(name, m, batch, repeat, args.threads):
            print("| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} |".format(*row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))

"""Whole-network speed: minissd's SSD against the same network in PyTorch (CPU, same thread count).

    python benchmarks/model.py [--quick] [--threads 1] [--repeat 3]
    python benchmarks/model.py --device cuda [--quick]      (the GPU machine)

Cases: the small model at batch 32 (the training command's hot loop) and SSD300 at batch 2 (batch 1
with --quick). For each: the forward pass (training mode, as in a training step) and forward +
backward (parameter gradients; neither side computes dL/d(image)), per image. The PyTorch network is
minissd/model/torch_reference.py: the same layers and weights, built from the same config, running on
PyTorch's own CPU convolutions (oneDNN); torch.set_num_threads and minissd's OpenBLAS/OpenMP threads
are set to the same --threads.

Prints a Markdown table of best-of-`repeat` times. The times are process CPU time divided by the
thread count (wall time inflates with other processes on a shared machine; CPU time does not);
compare the ratios, and read the absolute times as a lower bound on wall time.

With ``--device cuda``: minissd on CuPy against torchvision's ``ssd300_vgg16`` (backbone + head, the
same network; random weights, fp32, TF32 off in both) at batch 8 and 32 (8 with --quick), and the
small model against its PyTorch twin on the GPU at batch 32; best wall time of `repeat` after a
warm-up, the GPU synchronised around each call.
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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
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


def make_passes(model, x, d_loc, d_conf, ref_net, ref_params, xt, d_loc_t, d_conf_t):
    """The four timed calls: (ours forward, ours forward+backward, reference forward, reference fwd+bwd).

    Both sides get the same input and the same upstream gradients for (loc, conf).
    """
    import torch

    def ours_fwd():
        model.forward(x)

    def ours_step():
        model.zero_grad()
        model.forward(x)
        model.backward(d_loc, d_conf)

    def ref_fwd():
        with torch.no_grad():
            ref_net(xt)

    def ref_step():
        for p in ref_params:
            p.grad = None
        lo, co = ref_net(xt)
        torch.autograd.backward([lo, co], [d_loc_t, d_conf_t])

    return ours_fwd, ours_step, ref_fwd, ref_step


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

    ours_fwd, ours_step, torch_fwd, torch_step = make_passes(model, x, d_loc, d_conf, ref, list(ref.parameters()),
                                                             xt, d_loc_t, d_conf_t)

    rows = []
    for label, ours, theirs in (("forward", ours_fwd, torch_fwd), ("forward+backward", ours_step, torch_step)):
        t_ours = best_cpu(ours, repeat, threads) / batch
        t_torch = best_cpu(theirs, repeat, threads) / batch
        rows.append((name, batch, label, t_ours * 1e3, t_torch * 1e3, t_ours / t_torch))
    return rows


def best_wall(fn, repeat, sync):
    """Best wall time over ``repeat`` calls after one warm-up, synchronising the GPU, in seconds."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def _torchvision_ssd300(num_classes):
    try:
        from torchvision.models.detection import ssd300_vgg16
    except Exception:
        return None
    try:
        return ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
    except TypeError:  # torchvision < 0.13
        return ssd300_vgg16(pretrained=False, pretrained_backbone=False, num_classes=num_classes)


def bench_gpu_case(name, num_classes, batch, repeat):
    import cupy
    import torch

    from minissd.model.torch_reference import build_torch_reference

    def sync():
        cupy.cuda.get_current_stream().synchronize()
        torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    model = build_model(name, num_classes, rng)
    model.input_grad = False
    s = model.image_size
    x_host = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    ref_name = "PyTorch twin"
    tv = _torchvision_ssd300(num_classes) if name == "ssd300" else None
    if tv is not None:
        ref_name = "torchvision"
        tv = tv.cuda().train()

        def ref_net(t):
            feats = list(tv.backbone(t).values())
            out = tv.head(feats)
            return out["bbox_regression"], out["cls_logits"]
        params = list(tv.backbone.parameters()) + list(tv.head.parameters())
    else:
        twin = build_torch_reference(model.config, num_classes).cuda()
        twin.load_minissd_state(model.state_dict())
        ref_net = twin
        params = list(twin.parameters())
    model.to("cuda")
    x = cupy.asarray(x_host)
    loc, conf = model.forward(x)
    d_loc = cupy.asarray(rng.standard_normal(loc.shape).astype(np.float32))
    d_conf = cupy.asarray(rng.standard_normal(conf.shape).astype(np.float32))
    xt = torch.as_tensor(x_host, device="cuda")
    d_loc_t = torch.as_tensor(cupy.asnumpy(d_loc), device="cuda")
    d_conf_t = torch.as_tensor(cupy.asnumpy(d_conf), device="cuda")

    ours_fwd, ours_step, ref_fwd, ref_step = make_passes(model, x, d_loc, d_conf, ref_net, params,
                                                         xt, d_loc_t, d_conf_t)

    rows = []
    for label, ours, theirs in (("forward", ours_fwd, ref_fwd), ("forward+backward", ours_step, ref_step)):
        t_ours = best_wall(ours, repeat, sync) / batch
        t_ref = best_wall(theirs, repeat, sync) / batch
        rows.append((name, batch, label, ref_name, t_ours * 1e3, t_ref * 1e3, t_ours / t_ref))
    del model, x, loc, conf
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()
    return rows


def main_gpu(args) -> int:
    import cupy
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases = [("small", 5, args.small_batch, args.repeat)]
    if not args.skip_ssd300:
        batches = [args.ssd300_batch] if args.ssd300_batch else ([8] if args.quick else [8, 32])
        cases += [("ssd300", 91, b, args.repeat) for b in batches]
    dev = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    dev = dev.decode() if isinstance(dev, bytes) else dev
    print(f"# minissd (CuPy {cupy.__version__}) vs PyTorch {torch.__version__} on {dev}, fp32, TF32 off")
    print()
    print("| model | batch | pass | reference | minissd ms/img | reference ms/img | minissd / reference |")
    print("|---|---:|---|---|---:|---:|---:|")
    for name, m, batch, repeat in cases:
        for row in bench_gpu_case(name, m, batch, repeat):
            print("| {} | {} | {} | {} | {:.3f} | {:.3f} | {:.2f} |".format(*row), flush=True)
    return 0


def main(args) -> int:
    if args.device == "cuda":
        return main_gpu(args)
    import torch

    torch.set_num_threads(args.threads)
    from minissd.nn import set_num_threads

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

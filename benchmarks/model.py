"""Whole-network speed: minissd's SSD against the same network in PyTorch, CPU (or GPU), same threads.

    python benchmarks/model.py                      # small model at batch 16 and 32, SSD300 at batch 2;
                                                    # 2 threads, then 1 thread
    python benchmarks/model.py --quick --allow-busy # smoke run: the small model at batch 4, seconds
    python benchmarks/model.py --device cuda [--quick]      (the GPU machine)

For each case: the forward pass (training mode, as in a training step) and forward + backward
(parameter gradients; neither side computes dL/d(image)), per image. The PyTorch network is
minissd/model/torch_reference.py: the same layers and weights, built from the same config, running on
PyTorch's own CPU convolutions (oneDNN). torch.set_num_threads and minissd's set_num_threads get the
same count.

The rules of benchmarks/_bench.py apply: interleaved rounds (minissd, PyTorch, minissd, ...; each side
in a round a burst of back-to-back calls, the first two untimed, `_bench.BURST`), medians
with [min-max], the ratio as the median of per-round ratios, the load average before and after each
table (rows marked BUSY and exit status 3 above 0.5 + threads, unless --allow-busy), and the
convolutions' GFLOP/s (forward 2*N*F*OH*OW*C*KH*KW, backward twice that, none for the image's
gradient) next to the fp32 peak of the cores in use.

With ``--device cuda``: minissd on CuPy against torchvision's ``ssd300_vgg16`` (backbone + head, the
same network; random weights, fp32, TF32 off in both) at batch 8 and 32 (8 with --quick), and the
small model against its PyTorch twin on the GPU at batch 32; best wall time of the repeats after a
warm-up, the GPU synchronised around each call.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402


def _batches(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch list must be comma-separated ints, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return vals


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _bench.add_common_args(p)
    p.add_argument("--small-batches", type=_batches, default=[16, 32], help="default 16,32")
    p.add_argument("--ssd300-batch", type=int, default=None, help="default 2 (8 and 32 on cuda)")
    p.add_argument("--skip-ssd300", action="store_true")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = p.parse_args(argv)
    _bench.check_repeats(args.repeats)
    return args


ARGS = parse_args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minissd.model import build_model  # noqa: E402
from minissd.model.configs import describe  # noqa: E402


def conv_flops(model, batch) -> int:
    """Forward + backward flops of the model's convolutions (heads included, no dL/d(image))."""
    macs = sum(r["macs"] for r in describe(model.config, model.num_classes))
    first = next(r["macs"] for r in describe(model.config) if r["macs"])
    return 2 * batch * (3 * macs - first)


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


def cpu_case(name, num_classes, batch):
    """(label, minissd fn, PyTorch fn) for forward and forward+backward, and the conv flops of each."""
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
    step_flops = conv_flops(model, batch)
    fwd_flops = 2 * batch * sum(r["macs"] for r in describe(model.config, num_classes))
    return model, [("forward", ours_fwd, torch_fwd, fwd_flops), ("forward+backward", ours_step, torch_step, step_flops)]


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
    repeat = args.repeats or 3
    cases = [("small", 5, 32, repeat)]
    if not args.skip_ssd300:
        batches = [args.ssd300_batch] if args.ssd300_batch else ([8] if args.quick else [8, 32])
        cases += [("ssd300", 91, b, repeat) for b in batches]
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

    from minissd.nn import set_num_threads

    repeats = args.repeats or (2 if args.quick else 5)
    cases = [("small", 5, b) for b in ([4] if args.quick else args.small_batches)]
    if not (args.skip_ssd300 or args.quick):
        cases.append(("ssd300", 21, args.ssd300_batch or 2))
    print(f"# minissd SSD vs its PyTorch twin {torch.__version__} (CPU), float32, training mode")
    print(f"\n{_bench.machine_line(args.threads, args.gemm)}; {platform.python_version()}")
    print(f"each round: per side {_bench.BURST[0]} untimed calls, then the median of {_bench.BURST[1]} timed ones, "
          f"back to back (_bench.BURST: each side warm and alone)")
    print(f"per image: median [min-max] of {repeats} interleaved rounds, {args.clock} clock; ratio = median of "
          f"per-round ratios [min-max]; GFLOP/s: the convolutions' flops / median time")
    recorder = _bench.Recorder(args.allow_busy)
    clock = _bench.cpu_peak(1)["clock_ghz"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        set_num_threads(threads)
        peak = _bench.cpu_peak(threads, clock)["gflops"]
        lines = []
        with _bench.LoadGuard(threads) as guard:
            for name, m, batch in cases:
                model, passes = cpu_case(name, m, batch)
                for label, ours, theirs, flops in passes:
                    a, b = _bench.interleaved([ours, theirs], repeats, args.clock, burst=_bench.BURST)
                    sa, sb, r = _bench.Stat(a), _bench.Stat(b), _bench.ratio_stat(a, b)
                    pct = f"{100 * flops / sa.median / 1e9 / peak:.0f}" if peak else "n/a"
                    lines.append(f"| {name} | {batch} | {label} | {sa.fmt(1e3 / batch, 2)} | "
                                 f"{sb.fmt(1e3 / batch, 2)} | {r.fmt(1, 2)} | {flops / sa.median / 1e9:.0f} | "
                                 f"{flops / sb.median / 1e9:.0f} | {pct} |")
                    guard.sample()
                    print(".", end="", file=sys.stderr, flush=True)
                model.clear_cache()
        print(file=sys.stderr)
        recorder.note(guard)
        mark = " BUSY |" if guard.busy else " |"
        print(f"\n### {threads} thread(s)\n")
        print("| model | batch | pass | minissd ms/img | PyTorch ms/img | minissd / PyTorch | minissd GFLOP/s | "
              "PyTorch GFLOP/s | minissd % of peak | |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for line in lines:
            print(line + mark)
        print(f"\n{guard.line()}", flush=True)
    return recorder.exit_code()


if __name__ == "__main__":
    sys.exit(main(ARGS))

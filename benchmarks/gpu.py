"""GPU speed of minissd (CuPy) against torchvision's ssd300_vgg16 (cuDNN), side by side (issue 8).

    python benchmarks/gpu.py [--quick]                 # the GPU machine: the TF32-off table
    python benchmarks/gpu.py --tf32 off|on|both        # one table (default off), or off then on
    python benchmarks/gpu.py --device cpu --quick      # smoke test of the same minissd code on NumPy

scripts/gpu_check.sh runs ``--quick --tf32 off`` and then, when its time budget allows, ``--quick --tf32
on --no-breakdown``, each in its own process under its own `timeout`. A fresh machine also compiles every
CuPy kernel in the first (warm-up) calls of the first case: leave a minute or two for that.

Rows (SSD300, random weights, 21 classes, fp32):
  train step, batch 32: minissd ``model.targets -> model.forward -> MultiBoxLoss forward/backward ->
      model.backward -> SGD.step`` (minissd.training.train_step, as the trainer), images already on the
      device, ground truth as host lists (minissd matches on the host, as in training);
      torchvision ``model(images, targets)`` in train mode (its transform, matching and loss on the
      device), ``loss.backward()``, ``torch.optim.SGD.step``. Same random boxes and labels on both
      sides; SGD lr 1e-3, momentum 0.9, weight decay 5e-4 on both.
  network forward, batch 8 and 32: minissd ``model.forward`` in eval mode against torchvision's
      ``head(backbone(x))`` under ``torch.no_grad`` in eval mode (no transform, no post-processing).
  inference, batch 1 and 8: a preprocessed (N, 3, 300, 300) device batch in, detections out.
      minissd ``model.forward`` + ``model.detect``; torchvision ``model.eval()(list of images)``.
      torchvision always runs its GeneralizedRCNNTransform: ssd300_vgg16 builds it with
      ``fixed_size=(300, 300)`` (so passing min_size/max_size is not possible - they are already
      derived from it), hence on a 300x300 input the "resize" is a same-size bilinear interpolate and
      the normalisation one element-wise pass: a small cost that stays in its time. Post-processing
      is the same on both sides: score > 0.01, pre-NMS top 400 per class, NMS IoU 0.45, top 200 per
      image. With random weights every class score is about 1/21 > 0.01, so both do the worst-case
      NMS work.

Timing: in one process, each case is warmed up (kernel compilation, cuBLAS/cuDNN plans, memory pools),
then timed with CUDA events recorded on the current stream around each call (cupy.cuda.Event for
minissd, torch.cuda.Event for torchvision; host work between the events - minissd's matching, the
loss's host read-back - is inside the interval because the end event is recorded after the call
returns). The median over repeats is reported.

Precision: fp32 with TF32 off on both sides for the main table: ``torch.backends.cuda.matmul.allow_tf32
= False``, ``torch.backends.cudnn.allow_tf32 = False``, and for CuPy the environment variable
``CUPY_TF32=0`` (its default; CuPy reads it when it loads, so this script sets it before importing
CuPy). The TF32-on table (``--tf32 on``, or the second half of ``--tf32 both``, which starts a child
process) runs with ``CUPY_TF32=1`` and both torch flags True.

Peak memory: torchvision ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
minissd the bytes held by CuPy's default memory pool (``total_bytes``) after ``free_all_blocks`` before
the case - the pool keeps every block it has allocated until freed, so what it holds after the case is
its high-water mark (an upper bound on live arrays: pool rounding and fragmentation count). Both include
the parameters, gradients and momentum buffers that exist. Between cases each side releases what the
last case left: minissd ``model.clear_cache()`` (the forward caches, every layer's kept buffers and the
shared workspace) and the loss's saved tensors, then the pool's free blocks; torchvision the gradients,
then ``torch.cuda.empty_cache()``.

Breakdown: one more, separate, profiled minissd train step (and one inference call) in which every
layer's forward/backward, the loss, matching, the SGD step and the copies are wrapped in synchronising
timers. Synchronising after every layer costs a little, so the parts add up to slightly more than the
un-profiled step; read the shares, not the sum.

Exit status: 0 done, 1 a case failed (its traceback is on stderr, the other cases still run),
2 no CuPy/GPU for --device cuda.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
import traceback


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (benchmarks/gpu.py) for what each row measures.")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda: the benchmark; cpu: a smoke test of the same minissd code on NumPy "
                        "(batch 1, one repeat, no torchvision) (default cuda)")
    p.add_argument("--quick", action="store_true",
                   help="fewer calls per case (3 timed after 2 warm-up), as scripts/gpu_check.sh runs it")
    p.add_argument("--tf32", choices=("off", "on", "both"), default="off",
                   help="off: TF32 disabled on both sides; on: enabled on both; both: the off table, then "
                        "the on table from a child process (default off)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per case (default 10, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3, 2 with --quick)")
    p.add_argument("--model", default="ssd300", help="minissd config (default ssd300)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-layer-type breakdown")
    p.add_argument("--no-torchvision", action="store_true", help="minissd only")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    if args.repeat is None:
        args.repeat = 1 if cpu else (3 if args.quick else 10)
    if args.warmup is None:
        args.warmup = 1 if cpu else (2 if args.quick else 3)
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be >= 1 and --warmup >= 0")
    # Batches: (train, forward..., inference...). The CPU smoke test runs every code path at batch 1.
    args.train_batch, args.fwd_batches, args.infer_batches = (1, (1,), (1,)) if cpu else (32, (8, 32), (1, 8))
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.device == "cuda":
    # CuPy reads CUPY_TF32 when it is imported (minissd.backend imports it): set it first.
    os.environ["CUPY_TF32"] = "1" if ARGS.tf32 == "on" else "0"

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

NUM_CLASSES = 21          # VOC: 20 objects + background
LR, MOMENTUM, WD = 1e-3, 0.9, 5e-4
DETECT = dict(score_threshold=0.01, nms_threshold=0.45, pre_nms_top_k=400, top_k=200)
MiB = 1024.0 ** 2


# ----------------------------------------------------------------------------------------------
# Clocks: one call of fn, in milliseconds
# ----------------------------------------------------------------------------------------------
class CupyClock:
    def __init__(self, cupy):
        self.cp = cupy

    def sync(self):
        self.cp.cuda.get_current_stream().synchronize()

    def once(self, fn):
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(self.cp.cuda.get_elapsed_time(start, end))


class TorchClock:
    def __init__(self, torch):
        self.torch = torch

    def sync(self):
        self.torch.cuda.synchronize()

    def once(self, fn):
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


class HostClock:
    def sync(self):
        pass

    def once(self, fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


class Memory:
    """Peak device bytes of one case: ``start()`` before, ``peak()`` after."""

    def __init__(self, kind, module=None):
        self.kind, self.m = kind, module

    def start(self):
        gc.collect()    # arrays of the last case that only a reference cycle still holds
        if self.kind == "cupy":
            self.m.get_default_memory_pool().free_all_blocks()
            self.m.get_default_pinned_memory_pool().free_all_blocks()
        elif self.kind == "torch":
            self.m.cuda.empty_cache()
            self.m.cuda.reset_peak_memory_stats()

    def peak(self):
        if self.kind == "cupy":
            return float(self.m.get_default_memory_pool().total_bytes())
        if self.kind == "torch":
            return float(self.m.cuda.max_memory_allocated())
        return float("nan")


def measure(clock, memory, fn, warmup, repeat):
    """(median ms, peak bytes) of ``fn`` after ``warmup`` untimed calls."""
    memory.start()
    for _ in range(warmup):
        fn()
    clock.sync()
    times = [clock.once(fn) for _ in range(repeat)]
    return statistics.median(times), memory.peak()


# ----------------------------------------------------------------------------------------------
# Inputs shared by both sides
# ----------------------------------------------------------------------------------------------
def random_targets(rng, batch, max_boxes=6):
    """Per image 1..max_boxes random normalised xyxy boxes (side >= 0.05) and labels in 1..20."""
    boxes, labels = [], []
    for _ in range(batch):
        g = int(rng.integers(1, max_boxes + 1))
        lo = rng.uniform(0.0, 0.7, size=(g, 2))
        size = rng.uniform(0.05, 0.3, size=(g, 2))
        boxes.append(np.concatenate([lo, np.minimum(lo + size, 1.0)], axis=1).astype(np.float32))
        labels.append(rng.integers(1, NUM_CLASSES, size=g).astype(np.int64))
    return boxes, labels


def random_images(rng, batch, size):
    return rng.standard_normal((batch, 3, size, size)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# minissd side
# ----------------------------------------------------------------------------------------------
class Minissd:
    def __init__(self, name, device, xp):
        from minissd.loss import MultiBoxLoss
        from minissd.model import build_model
        from minissd.training import make_optimizer

        self.xp, self.device = xp, device
        self.model = build_model(name, NUM_CLASSES, np.random.default_rng(0))
        self.model.input_grad = False   # as in training: nothing needs dL/d(image)
        if device == "cuda":
            self.model.to("cuda")
        self.size = self.model.image_size
        self.loss_fn = MultiBoxLoss(neg_pos_ratio=3.0)
        self.optimizer = make_optimizer(self.model, LR, MOMENTUM, WD)   # as the trainer: Caffe groups

    def train_step(self, x, gt_boxes, gt_labels):
        """One training step: minissd.training.train_step, the function the trainer calls."""
        from minissd.data import Batch
        from minissd.training import train_step

        self.model.train()
        batch = Batch(x, gt_boxes, gt_labels, ids=[], sizes=[], difficult=None)
        train_step(self.model, self.loss_fn, self.optimizer, batch, threshold=0.5, strategy="bipartite")

    def train_step_fn(self, x, gt_boxes, gt_labels):
        return lambda: self.train_step(x, gt_boxes, gt_labels)

    def forward_fn(self, x):
        model = self.model

        def fwd():
            model.eval()
            model.forward(x)
        return fwd

    def infer_fn(self, x):
        model = self.model

        def infer():
            model.eval()
            loc, conf = model.forward(x)
            return model.detect(loc, conf, **DETECT)
        return infer

    def release(self):
        """Drop what the last case left on the device: caches, kept buffers, the loss's saved tensors."""
        self.model.clear_cache()     # the SSD's cache, every layer's kept buffers, the shared workspace
        self.model.zero_grad()
        for name in ("_cache", "pos_mask", "neg_mask", "num_neg"):    # MultiBoxLoss's saved state
            if getattr(self.loss_fn, name, None) is not None:
                setattr(self.loss_fn, name, None)
        gc.collect()
        if self.device == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()


# ----------------------------------------------------------------------------------------------
# torchvision side
# ----------------------------------------------------------------------------------------------
def load_torchvision():
    """(torch, ssd300_vgg16) or (None, reason)."""
    try:
        import torch
        from torchvision.models.detection import ssd300_vgg16
    except Exception as e:  # ImportError, or a torchvision built for another torch
        return None, f"{type(e).__name__}: {e}"
    return torch, ssd300_vgg16


class Torchvision:
    def __init__(self, torch, ssd300_vgg16):
        self.torch = torch
        torch.manual_seed(0)
        self.model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).cuda()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)

    def train_step_fn(self, x_host, gt_boxes, gt_labels):
        torch, model, opt = self.torch, self.model, self.optimizer
        x = torch.as_tensor(x_host, device="cuda")
        images = list(x.unbind(0))
        size = x.shape[-1]
        # torchvision wants absolute pixel xyxy boxes and int64 labels, on the device
        targets = [{"boxes": torch.as_tensor(b * size, device="cuda"),
                    "labels": torch.as_tensor(lab, device="cuda")} for b, lab in zip(gt_boxes, gt_labels, strict=True)]

        def step():
            model.train()
            opt.zero_grad(set_to_none=True)
            losses = model(images, targets)
            loss = losses["bbox_regression"] + losses["classification"]
            loss.backward()
            opt.step()
        return step

    def forward_fn(self, x_host):
        torch, model = self.torch, self.model
        x = torch.as_tensor(x_host, device="cuda")

        def fwd():
            model.eval()
            with torch.no_grad():
                feats = list(model.backbone(x).values())
                model.head(feats)
        return fwd

    def infer_fn(self, x_host):
        torch, model = self.torch, self.model
        images = list(torch.as_tensor(x_host, device="cuda").unbind(0))

        def infer():
            model.eval()
            with torch.no_grad():
                return model(images)
        return infer

    def release(self):
        self.optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------
# The per-layer-type breakdown (a separate, profiled minissd pass)
# ----------------------------------------------------------------------------------------------
class Profiler:
    """Accumulates synchronised milliseconds per category while patches are installed."""

    def __init__(self, clock):
        self.clock = clock
        self.ms = {}
        self.undo = []

    def wrap(self, owner, attr, category):
        original = getattr(owner, attr)
        clock, ms = self.clock, self.ms

        def timed(*args, **kwargs):
            out = []
            ms[category] = ms.get(category, 0.0) + clock.once(lambda: out.append(original(*args, **kwargs)))
            return out[0]
        had_own = attr in vars(owner) if hasattr(owner, "__dict__") else False
        setattr(owner, attr, timed)
        self.undo.append((owner, attr, original, had_own))

    def restore(self):
        for owner, attr, original, had_own in reversed(self.undo):
            if had_own or isinstance(owner, type(sys)):
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)   # back to the class's method
        self.undo.clear()


def install_layer_timers(prof, ms_side):
    from minissd.nn import Conv2d, L2Norm, MaxPool2d, ReLU

    model = ms_side.model
    for name, mod in model.named_modules():
        top = name.split(".")[0]
        if isinstance(mod, Conv2d):
            kind = "heads (loc/conf conv)" if top in ("loc", "conf") else "conv"
        elif isinstance(mod, ReLU):
            kind = "ReLU"
        elif isinstance(mod, MaxPool2d):
            kind = "pooling"
        elif isinstance(mod, L2Norm):
            kind = "L2Norm"
        else:
            continue
        prof.wrap(mod, "forward", f"{kind} fwd")
        prof.wrap(mod, "backward", f"{kind} bwd")


def breakdown(clock, ms_side, x_host, gt_boxes, gt_labels, infer_x_host):
    """Rows (part, ms) of one profiled train step and one profiled inference call."""
    import minissd.boxes as boxes_mod

    xp = ms_side.xp
    model, loss_fn, opt = ms_side.model, ms_side.loss_fn, ms_side.optimizer

    # The image upload and the detections' read-back go through the module-level _h2d/_d2h so the
    # profiled pass can time them (a global name is looked up at call time, so patching works).
    def train_step():
        ms_side.train_step(_h2d(xp, x_host), gt_boxes, gt_labels)

    def infer():
        model.eval()
        x = _h2d(xp, infer_x_host)
        loc, conf = model.forward(x)
        _d2h(model.detect(loc, conf, **DETECT))

    results = []
    for label, fn, wraps in (
            ("train step", train_step, [
                (model, "forward", "network forward (total)"), (model, "backward", "network backward (total)"),
                (model, "targets", "targets (total)"), (boxes_mod, "match_batch", "matching (host)"),
                (boxes_mod, "encode", "encode targets"), (loss_fn, "forward", "loss fwd"),
                (loss_fn, "backward", "loss bwd"), (opt, "step", "SGD step")]),
            ("inference", infer, [
                (model, "forward", "network forward (total)"), (boxes_mod, "decode", "decode boxes"),
                (boxes_mod, "batched_detect", "NMS + top-k (batched_detect)")])):
        fn()  # warm (compiles kernels the timed runs below skip)
        clock.sync()
        total = clock.once(fn)
        prof = Profiler(clock)
        for owner, attr, cat in wraps:
            prof.wrap(owner, attr, cat)
        this = sys.modules[__name__]
        prof.wrap(this, "_h2d", "copy images host->device")
        prof.wrap(this, "_d2h", "copy detections device->host")
        install_layer_timers(prof, ms_side)
        try:
            clock.sync()
            profiled = clock.once(fn)
        finally:
            prof.restore()
        parts = prof.ms
        layer = {k: v for k, v in parts.items() if k.endswith(" fwd") or k.endswith(" bwd")}
        layer.pop("loss fwd", None)
        layer.pop("loss bwd", None)
        rows = [(k, parts[k]) for k in sorted(layer, key=lambda k: -layer[k])]
        if "targets (total)" in parts:
            match = parts.get("matching (host)", 0.0) + parts.get("encode targets", 0.0)
            rows.append(("matching + encoding (host)", match))
            rows.append(("copy targets host->device", parts["targets (total)"] - match))
        for k in ("loss fwd", "loss bwd", "SGD step", "decode boxes", "NMS + top-k (batched_detect)",
                  "copy images host->device", "copy detections device->host"):
            if k in parts:
                rows.append((k, parts[k]))
        net = parts.get("network forward (total)", 0.0) + parts.get("network backward (total)", 0.0)
        glue = net - sum(layer.values())
        rows.append(("SSD glue (head reshapes, grad adds)", glue))
        accounted = sum(v for k, v in rows)
        rows.append(("other (unaccounted)", profiled - accounted))
        results.append((label, total, profiled, rows))
    return results


def _h2d(xp, a):
    return xp.asarray(a)


def _d2h(dets):
    from minissd.backend import to_cpu
    return [tuple(to_cpu(f) for f in d) for d in dets]


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------
def fmt(v, spec):
    return "-" if v is None or v != v else format(v, spec)


def ratio(a, b):
    return None if a is None or b is None or not b or a != a or b != b else a / b


def run(args) -> int:
    cuda = args.device == "cuda"
    if cuda:
        from minissd.backend import cupy_module, gpu_available

        cp = cupy_module()
        if cp is None or not gpu_available():
            print("benchmarks/gpu.py: needs CuPy and a CUDA GPU (use --device cpu for a NumPy smoke test)",
                  file=sys.stderr)
            return 2
        props = cp.cuda.runtime.getDeviceProperties(0)
        gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        ms_clock, ms_mem, xp = CupyClock(cp), Memory("cupy", cp), cp
        versions = f"CuPy {cp.__version__}"
    else:
        import platform
        gpu_name = f"CPU smoke test ({platform.processor() or platform.machine()}), NumPy {np.__version__}"
        ms_clock, ms_mem, xp = HostClock(), Memory("none"), np
        versions = f"NumPy {np.__version__}"

    tv = None
    note = ""
    if not cuda:
        note = "CPU smoke test: minissd only, timings are not the benchmark"
    elif args.no_torchvision:
        note = "torchvision skipped (--no-torchvision): minissd only"
    else:
        torch, ctor = load_torchvision()
        if torch is None:
            note = f"torchvision not importable ({ctor}): minissd only"
        else:
            tf32 = args.tf32 == "on"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = False
            import torchvision
            versions += f", torch {torch.__version__}, torchvision {torchvision.__version__}"
            tv_clock, tv_mem = TorchClock(torch), Memory("torch", torch)
    tf32_text = ("TF32 on (CUPY_TF32=1, torch allow_tf32=True)" if args.tf32 == "on"
                 else "TF32 off (CUPY_TF32=0, torch allow_tf32=False)") if cuda else "no TF32 on a CPU"

    print(f"# {args.model}: minissd vs torchvision ssd300_vgg16 on {gpu_name}: fp32, {tf32_text}")
    print(f"# {versions}; median of {args.repeat} after {args.warmup} warm-up call(s); "
          f"{NUM_CLASSES} classes, random weights")
    if note:
        print(f"# {note}")
    print(flush=True)

    rng = np.random.default_rng(0)
    failed = 0
    ms_side = Minissd(args.model, args.device, xp)
    if cuda and not args.no_torchvision and torch is not None:
        try:
            tv = Torchvision(torch, ctor)
        except Exception:
            traceback.print_exc()
            print("# torchvision model failed to build: minissd only", flush=True)
            failed += 1
    size = ms_side.size
    train_x = random_images(rng, args.train_batch, size)
    gt_boxes, gt_labels = random_targets(rng, args.train_batch)
    cases = [("train step (fwd+loss+bwd+SGD)", args.train_batch, "train")]
    cases += [("network forward", b, "forward") for b in args.fwd_batches]
    cases += [("inference (forward+detect)", b, "infer") for b in args.infer_batches]

    print("| case | batch | minissd ms | torchvision ms | ratio | minissd img/s | torchvision img/s "
          "| minissd peak MiB | torchvision peak MiB | mem ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, batch, kind in cases:
        x_host = train_x if kind == "train" else random_images(rng, batch, size)
        results = []
        for side in (ms_side, tv):
            if side is None:
                results.append((None, None))
                continue
            clock, mem = (ms_clock, ms_mem) if side is ms_side else (tv_clock, tv_mem)
            try:
                x = xp.asarray(x_host) if side is ms_side else x_host
                if kind == "train":
                    fn = side.train_step_fn(x, gt_boxes, gt_labels)
                elif kind == "forward":
                    fn = side.forward_fn(x)
                else:
                    fn = side.infer_fn(x)
                results.append(measure(clock, mem, fn, args.warmup, args.repeat))
            except Exception:
                print(f"\n{type(side).__name__} failed on {label} batch {batch}:", file=sys.stderr)
                traceback.print_exc()
                failed += 1
                results.append((None, None))
            finally:
                side.release()
                fn = x = None
        (t_ms, m_ms), (t_tv, m_tv) = results
        ips = [None if t is None else batch * 1e3 / t for t in (t_ms, t_tv)]
        mib = [None if m is None else m / MiB for m in (m_ms, m_tv)]
        print(f"| {label} | {batch} | {fmt(t_ms, '.1f')} | {fmt(t_tv, '.1f')} | {fmt(ratio(t_ms, t_tv), '.2f')} "
              f"| {fmt(ips[0], '.1f')} | {fmt(ips[1], '.1f')} | {fmt(mib[0], '.0f')} | {fmt(mib[1], '.0f')} "
              f"| {fmt(ratio(m_ms, m_tv), '.2f')} |", flush=True)
    print("\nratio = minissd / torchvision (time: lower is better for minissd; img/s is the inverse). "
          "Peak: CuPy pool bytes held vs torch.cuda.max_memory_allocated.", flush=True)

    if not args.no_breakdown:
        print()
        try:
            infer_b = args.infer_batches[-1]
            for label, total, profiled, rows in breakdown(ms_clock, ms_side, train_x, gt_boxes, gt_labels,
                                                          random_images(rng, infer_b, size)):
                b = args.train_batch if label == "train step" else infer_b
                print(f"## minissd {label} breakdown, batch {b}: {total:.1f} ms un-profiled, "
                      f"{profiled:.1f} ms with a sync after every part")
                print()
                print("| part | ms | share |")
                print("|---|---:|---:|")
                for k, v in rows:
                    print(f"| {k} | {v:.2f} | {100.0 * v / profiled:.1f}% |")
                print(flush=True)
        except Exception:
            print("minissd breakdown failed:", file=sys.stderr)
            traceback.print_exc()
            failed += 1
    return 1 if failed else 0


def main(args) -> int:
    rc = run(args)
    if args.device == "cuda" and args.tf32 == "both" and rc != 2:
        # CuPy's TF32 switch is read at import: the TF32-on table needs a fresh process.
        print("\n", flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--device", "cuda", "--tf32", "on", "--no-breakdown",
               "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--model", args.model]
        if args.quick:
            cmd.append("--quick")
        if args.no_torchvision:
            cmd.append("--no-torchvision")
        env = dict(os.environ, CUPY_TF32="1")
        child = subprocess.run(cmd, env=env).returncode
        rc = rc or child
    return rc


if __name__ == "__main__":
    sys.exit(main(ARGS))

"""Box kernels: Cython vs the NumPy twin, timed side by side in one run (and the GPU NMS where a GPU is).

    python benchmarks/boxes.py [--repeat 5] [--seed 0] [--quick] [--device auto|cpu|cuda]

Cases (the issue's): IoU of the 8732 SSD300 priors with 50 boxes; matching a batch of 32 images with 1-50
objects each against the SSD300 priors (both strategies); SSD300 post-processing of 8 images (8732 boxes
x 21 classes, scores from a softmax where most boxes are background); the same for the small model (1524
boxes x 5 classes, 64 images); NMS of one class's 400 candidates and of 3000 boxes. Prints a Markdown table
of best-of-`repeat` CPU times of the one thread that runs everything: the time per call (or per image),
the twin's time, and the speedup twin / Cython.

The machine this runs on may be shared: compare the speedups, and read absolute times as upper bounds.

Devices: ``--device auto`` (default) adds the GPU NMS table (CuPy bitmask kernel vs Cython, wall time)
where CuPy sees a GPU; ``--device cuda`` requires one (exit 2 with a one-line message otherwise);
``--device cpu`` prints the CPU table only. ``--quick`` (scripts/gpu_check.sh) times 2 calls per case
instead of 5 and the NumPy twins once.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minissd.backend import gpu_unavailable_reason, synchronize  # noqa: E402
from minissd.boxes import (  # noqa: E402
    batched_detect,
    batched_detect_ref,
    build_prior_index,
    cxcywh_to_xyxy,
    decode,
    iou,
    iou_ref,
    match_batch,
    match_ref,
    nms,
    nms_ref,
)
from minissd.priors import make_priors  # noqa: E402


def best_time(fn, repeat):
    """Best CPU time of this thread over ``repeat`` calls (after one warm-up call), in seconds.

    CPU time, not wall time: on a shared machine the wall clock also counts the time other processes
    hold the core; the thread's CPU time is what one core spends on the work (still inflated somewhat
    when a busy sibling hyperthread shares the core's caches). The GPU table uses wall time.
    """
    fn()
    times = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)


def best_wall(fn, repeat):
    """Best wall time of ``repeat`` calls (after one warm-up call), synchronising the GPU, in seconds."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def random_objects(rng, n):
    """n ground-truth boxes, normalised xyxy, sides 3 %..80 % of the image (a VOC-like spread)."""
    wh = np.exp(rng.uniform(np.log(0.03), np.log(0.8), (n, 2)))
    xy = rng.random((n, 2)) * (1 - wh)
    return np.concatenate([xy, xy + wh], axis=1)


def realistic_outputs(rng, priors, n_images, n_classes, objects=(1, 6), background=6.0):
    """Decoded boxes (N, P, 4) and softmax probabilities (N, P, M) that look like a trained SSD's.

    Each image has a few objects; priors that overlap one (IoU > 0.4) score its class high and regress
    near it; every other prior is background (logit ~ N(background, 1) against N(0, 1) per class):
    with background 6 about 13 % of (box, class) pairs pass the 0.01 score threshold (an unsure model,
    many candidates), with 8 about 2 %.
    """
    P, M = priors.shape[0], n_classes + 1
    priors_xyxy = cxcywh_to_xyxy(priors)
    loc = rng.standard_normal((n_images, P, 4)) * 0.3
    logits = rng.standard_normal((n_images, P, M))
    logits[..., 0] += background
    for n in range(n_images):
        gt = random_objects(rng, int(rng.integers(*objects)))
        ov = iou(priors_xyxy, gt)                                           # (P, G)
        best, which = ov.max(axis=1), ov.argmax(axis=1)
        pos = best > 0.4
        cls = rng.integers(1, M, len(gt))
        logits[n, pos, cls[which[pos]]] += 6.0 + 6.0 * best[pos]
    boxes = decode(loc, priors)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return boxes, e / e.sum(axis=-1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per case (default 5, 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer timed calls (2), the NumPy twins once")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the GPU NMS table where a GPU is; cuda: require one; cpu: CPU table only")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    gpu_reason = gpu_unavailable_reason() if args.device != "cpu" else "--device cpu"
    if args.device == "cuda" and gpu_reason is not None:
        print(f"benchmarks/boxes.py: --device cuda needs CuPy and a CUDA GPU: {gpu_reason}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    r = args.repeat
    r_twin = 1 if args.quick else max(1, r // 2)
    rows = []

    def add(case, per, n_units, t_fast, t_ref, target=""):
        rows.append((case, f"{t_fast / n_units * 1e3:.3f} ms {per}", f"{t_ref / n_units * 1e3:.2f} ms",
                     f"{t_ref / t_fast:.1f}x", target))

    priors300 = make_priors("ssd300")
    p300_xyxy = cxcywh_to_xyxy(priors300)
    gt50 = random_objects(rng, 50)
    add("IoU 8732 x 50", "/call", 1, best_time(lambda: iou(p300_xyxy, gt50), r),
        best_time(lambda: iou_ref(p300_xyxy, gt50), r))

    gts = [random_objects(rng, int(rng.integers(1, 51))) for _ in range(32)]
    index300 = build_prior_index(priors300)   # built once, as the model does
    labs = [rng.integers(1, 21, len(g)) for g in gts]
    # Each loop below binds its loop variables as the lambdas' defaults, so a lambda never sees a later
    # iteration's values (best_time calls it at once, but a reader should not have to check that).
    for strategy in ("bipartite", "best_prior"):
        t_fast = best_time(lambda st=strategy: match_batch(priors300, gts, labs, 0.5, st, index=index300), r)
        t_ref = best_time(lambda st=strategy: [match_ref(priors300, g, lab, 0.5, st)
                                               for g, lab in zip(gts, labs, strict=True)], r_twin)
        add(f"match batch of 32, 1-50 objects, SSD300 priors ({strategy})", "/batch", 1, t_fast, t_ref,
            "<= 30 ms/batch")

    for background, what in ((6.0, "unsure"), (8.0, "confident")):
        boxes, probs = realistic_outputs(rng, priors300, 8, 20, background=background)
        frac = float((probs[..., 1:] > 0.01).mean())
        t_fast = best_time(lambda b=boxes, p=probs: batched_detect(b, p), r)
        t_ref = best_time(lambda b=boxes, p=probs: batched_detect_ref(b, p), 1)
        add(f"SSD300 post-processing, 8 images, 8732 x 21, {what} model ({frac:.1%} of pairs > 0.01)",
            "/image", 8, t_fast, t_ref, "<= 10 ms/image")
    loc = np.zeros_like(boxes)
    t_dec = best_time(lambda: decode(loc, priors300), r)
    rows.append(("  (decode of the same batch, NumPy, for reference)", f"{t_dec / 8 * 1e3:.3f} ms /image", "",
                 "", ""))

    priors_small = make_priors("small")
    boxes_s, probs_s = realistic_outputs(rng, priors_small, 64, 4)
    t_fast = best_time(lambda: batched_detect(boxes_s, probs_s), r)
    t_ref = best_time(lambda: batched_detect_ref(boxes_s, probs_s), 1)
    add("small-model post-processing, 64 images, 1524 x 5", "/image", 64, t_fast, t_ref)

    for k in (400, 3000):
        # one class's candidates: boxes scattered around a few objects, so NMS has work to do
        centres = random_objects(rng, 8)[rng.integers(0, 8, k)]
        jitter = rng.normal(0, 0.03, (k, 4))
        b = np.sort((centres + jitter).reshape(k, 2, 2), axis=1).reshape(k, 4)
        s = rng.random(k)
        add(f"NMS of {k} boxes at 0.45 ({len(nms(b, s, 0.45))} kept)", "/call", 1,
            best_time(lambda b=b, s=s: nms(b, s, 0.45), r), best_time(lambda b=b, s=s: nms_ref(b, s, 0.45), r),
            ">= 10x")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# benchmarks/boxes.py  ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}, python {platform.python_version()}, numpy {np.__version__}, "
          f"best of {r}, thread CPU time)\n")
    print("| case | Cython | NumPy twin | speedup | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    if gpu_reason is None:
        import cupy as cp
        print("\n| GPU NMS (CuPy bitmask kernel) | GPU | CPU Cython | CPU / GPU |")
        print("|---|---|---|---|")
        for k in (400, 3000, 8732):
            b = random_objects(rng, k)
            s = rng.random(k)
            bd, sd = cp.asarray(b), cp.asarray(s)
            assert np.array_equal(cp.asnumpy(nms(bd, sd, 0.45)), nms(b, s, 0.45))
            t_gpu = best_wall(lambda bd=bd, sd=sd: nms(bd, sd, 0.45), r)
            t_cpu = best_wall(lambda b=b, s=s: nms(b, s, 0.45), r)
            print(f"| {k} boxes | {t_gpu * 1e3:.3f} ms | {t_cpu * 1e3:.3f} ms | {t_cpu / t_gpu:.1f}x |")
    elif args.device == "auto":
        print(f"\n(GPU NMS: not run: {gpu_reason}; run on a GPU machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

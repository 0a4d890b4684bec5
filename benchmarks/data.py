"""Data pipeline speed: shapes drawing, the SSD augmentation, the eval resize, loader throughput.

    python benchmarks/data.py [--n 300]

Prints CPU milliseconds per 128 px image (process time of this process, which is what one core
spends; wall time on a shared machine mostly measures the neighbours) and, as the reference timed in
the same run, a Pillow bilinear resize of a 128 px image to 128 px (ratio = time / reference).
"""
import argparse
import time

import numpy as np
from PIL import Image

from minissd.data import DataLoader, EvalTransform, ShapesDataset, TrainTransform


def cpu_ms(fn, n):
    fn(0)
    t = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - t) / n * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args(argv)
    n = args.n
    ds = ShapesDataset("train", size=128)
    samples = [ds.get(i) for i in range(n)]
    pil = Image.fromarray(samples[0].image)
    ref = cpu_ms(lambda i: pil.resize((127, 127), Image.BILINEAR), n)
    train = TrainTransform(128)
    light = TrainTransform(128, photometric=False, expand=False)
    ev = EvalTransform(128)
    rng = np.random.default_rng(0)
    voc_like = np.random.default_rng(1).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    voc_boxes = np.array([[10, 20, 200, 300], [300, 100, 480, 370]], np.float32)
    rows = [
        ("shapes: draw one image", cpu_ms(lambda i: ds.get(i + n), n)),
        ("TrainTransform(128), full SSD augmentation", cpu_ms(
            lambda i: train(samples[i].image, samples[i].boxes, samples[i].labels, rng), n)),
        ("TrainTransform(128), crop + flip only", cpu_ms(
            lambda i: light(samples[i].image, samples[i].boxes, samples[i].labels, rng), n)),
        ("EvalTransform(128)", cpu_ms(lambda i: ev(samples[i].image, samples[i].boxes, samples[i].labels), n)),
        ("TrainTransform(300) on a 500x375 image", cpu_ms(
            lambda i: TrainTransform(300)(voc_like, voc_boxes, np.array([1, 2]), rng), max(n // 3, 10))),
    ]
    print(f"reference: Pillow bilinear resize 128 px -> 127 px: {ref:.3f} ms CPU\n")
    print("| step | CPU ms / image | ratio to reference |")
    print("|---|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {ms / ref:.1f} |")
    count = 32 * 8
    for workers in (0, 2):
        loader = DataLoader(ShapesDataset("train", count=count), 32, TrainTransform(128), num_workers=workers)
        t, c = time.perf_counter(), time.process_time()
        for _ in loader:
            pass
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"| DataLoader, shapes + full augmentation, batch 32, {workers} worker threads: "
              f"{count / wall:.0f} images/s wall, {cpu / count * 1e3:.2f} CPU ms / image |  |  |")


if __name__ == "__main__":
    main()

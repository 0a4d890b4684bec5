"""Is the shapes dataset learnable in minutes? A PyTorch twin of the small model trained on it.

    python benchmarks/shapes_proxy.py [--iters 900] [--aug flip|crop|full] [--threads 1]

Trains minissd's small SSD (the PyTorch twin in minissd/model/torch_reference.py, same config, same
1524 default boxes, minissd's matching, encoding, detection and VOC AP) with batch 32, SGD momentum
0.9, weight decay 5e-4, lr 0.04 after a 100-iteration linear warmup; prints the val mAP every 300
iterations and the test-split mAP@0.5 (VOC07 11-point) at the end. It measures the dataset and the
augmentation, not minissd's speed: compare iterations, not seconds. Results: benchmarks/RESULTS.md.
"""
import argparse
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=900)
    parser.add_argument("--aug", choices=("flip", "crop", "full"), default="flip",
                        help="flip: flip only; crop: min-IoU crop + flip; full: the whole SSD augmentation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decay-at", type=float, default=None, metavar="FRAC",
                        help="multiply the lr by 0.1 from this fraction of --iters on (minissd.train's default "
                             "schedule is 0.85); default: no decay")
    parser.add_argument("--triangle-orientations", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from minissd.boxes import batched_detect, build_prior_index, decode, encode, match_batch
    from minissd.data import DataLoader, EvalTransform, ShapesDataset, TrainTransform
    from minissd.metrics import evaluate_detections
    from minissd.model.torch_reference import build_torch_reference
    from minissd.priors import make_priors

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_torch_reference("small", 5)
    for name, p in model.params.items():
        if name.endswith("/W"):
            torch.nn.init.xavier_uniform_(p)
    priors = make_priors("small")
    prior_index = build_prior_index(priors)   # the matching index, built once (as the SSD model does)
    mean, std = 127.0, 64.0
    steps = {"flip": dict(photometric=False, expand=False, crop=False),
             "crop": dict(photometric=False, expand=False), "full": {}}[args.aug]
    train = ShapesDataset("train", triangle_orientations=args.triangle_orientations)
    loader = DataLoader(train, 32, TrainTransform(128, mean, std, **steps), seed=0, num_workers=1)
    weights = [p for k, p in model.params.items() if k.endswith("/W")]
    others = [p for k, p in model.params.items() if not k.endswith("/W")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4}, {"params": others, "weight_decay": 0.0}],
                          lr=0.04, momentum=0.9)

    def evaluate(split, count):
        ds = ShapesDataset(split, count=count, triangle_orientations=args.triangle_orientations)
        dets, gts = [], []
        model.eval()
        with torch.no_grad():
            for b in DataLoader(ds, 50, EvalTransform(128, mean, std), shuffle=False, num_workers=0,
                                drop_last=False):
                loc, conf = model(torch.from_numpy(b.images))
                dets += batched_detect(decode(loc.numpy().astype(np.float64), priors),
                                       torch.softmax(conf, -1).numpy())
                gts += list(zip(b.boxes, b.labels, b.difficult, strict=True))
        model.train()
        result = evaluate_detections(dets, gts, 4)
        return result["map"], {train.class_names[k - 1]: round(v, 3) for k, v in result["ap"].items()}

    # minissd's multistep milestone: the lr drops after iteration round(frac * iters)
    decay_from = round(args.decay_at * args.iters) if args.decay_at else None
    start = time.time()
    for it, batch in enumerate(loader.batches(), 1):
        for group in opt.param_groups:
            group["lr"] = 0.04 * min(1.0, it / 100) * (0.1 if decay_from and it > decay_from else 1.0)
        labels, matched = match_batch(priors, batch.boxes, batch.labels, 0.5, index=prior_index)
        loc_t = torch.from_numpy(encode(matched, priors).astype(np.float32))
        labels = torch.from_numpy(np.asarray(labels))
        loc, conf = model(torch.from_numpy(batch.images))
        pos = labels > 0
        num_pos = max(int(pos.sum()), 1)
        ce = F.cross_entropy(conf.reshape(-1, 5), labels.reshape(-1), reduction="none").reshape(labels.shape)
        with torch.no_grad():  # hard negative mining, 3 negatives per positive
            ranked = ce.masked_fill(pos, -1.0).argsort(1, descending=True).argsort(1)
            neg = ranked < (3 * pos.sum(1, keepdim=True)).clamp(max=labels.shape[1] - 1)
        loss = ce[pos | neg].sum() / num_pos + F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum") / num_pos
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 50 == 0:
            print(f"iter {it} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
        if it % 300 == 0 and it < args.iters:
            print("  val mAP %.3f %s" % evaluate("val", 200), flush=True)
        if it >= args.iters:
            break
    train_s = time.time() - start
    m, ap = evaluate("test", 500)
    print(f"iterations {args.iters} (batch 32, aug {args.aug}): {args.iters * 32 / train_s:.1f} images/s over "
          f"{train_s / 60:.1f} min of training (validation passes included); test mAP@0.5 {m:.3f} {ap}")


if __name__ == "__main__":
    main()

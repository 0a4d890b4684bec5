"""One training iteration of SSD, as in the paper (section 2.2, "Training"), in one function.

    targets = model.targets(boxes, labels)     match default boxes to ground truth, encode (eq. 2)
    loc, conf = model.forward(x)               the network (section 2.1)
    parts = loss_fn.forward(...)               localisation + confidence loss, hard negatives (eq. 1-3)
    d_loc, d_conf = loss_fn.backward()
    model.backward(d_loc, d_conf)              hand-written backward, no autograd
    bucket.allreduce_()                        data-parallel only: sum the ranks' gradients
    optimizer.step()                           SGD with momentum

`train_step` is that sequence and nothing else: the trainer (minissd/training/trainer.py), the
benchmarks and the tests all call it. The targets come first: they depend only on the ground truth,
so on the CPU the order changes nothing, and on a GPU the host-side matching runs while the device is
still busy with the previous step's backward pass and SGD update (queued, not waited for).

Nothing here waits for the device. A ``timer`` (`StageTimer`) sees each stage end; it alone decides
whether to synchronise first (profiling) — an unsynchronised GPU stage time would only measure the
kernel launches. The one wait per step is the loss's read-back of its sums (the NaN check needs them).
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..backend import cupy_module, get_array_module, synchronize

STAGES = ("data", "targets", "forward", "loss", "backward", "step")
# With a gradient bucket (data-parallel) the step also passes this stage, between backward and step.
ALLREDUCE_STAGE = "allreduce"


def train_step(model, loss_fn, optimizer, batch, *, threshold: float = 0.5, strategy: str = "bipartite",
               upload=None, timer=None, bucket=None):
    """One SGD iteration on ``batch`` (a `minissd.data.Batch`); returns the loss's `LossParts`.

    ``optimizer.lr`` is used as set (the caller applies the schedule). When the loss is not finite
    the step stops before any gradient is applied (parts.total is NaN/inf; the weights are as they
    were); NaN/inf in the network outputs raise `minissd.loss.NonFiniteError` from the loss.
    ``upload`` moves the images to the model's device (default: `xp.asarray`; the trainer passes a
    `BatchUpload`); ``timer.mark(stage)`` is called as each of `STAGES` ends.

    ``bucket`` (`minissd.distributed.GradientBucket`, data-parallel training): after the backward pass
    the gradients are summed over the ranks (timer stage ``"allreduce"``), so every rank applies the
    same update. The loss must then carry the same communicator (``MultiBoxLoss(comm=...)``): it
    normalises by the global N, which also makes the non-finite early return the same on every rank.
    """
    mark = timer.mark if timer is not None else _no_mark
    x = upload(batch.images) if upload is not None else _model_xp(model).asarray(batch.images)
    mark("data")
    model.zero_grad()
    loc_t, labels = model.targets(batch.boxes, batch.labels, threshold=threshold, strategy=strategy)
    mark("targets")
    loc, conf = model.forward(x)
    mark("forward")
    parts = loss_fn.forward(loc, conf, loc_t, labels)
    if not math.isfinite(parts.total):
        return parts
    d_loc, d_conf = loss_fn.backward()
    mark("loss")
    model.backward(d_loc, d_conf)
    mark("backward")
    if bucket is not None:
        bucket.allreduce_()
        mark(ALLREDUCE_STAGE)
    optimizer.step()
    mark("step")
    return parts


def _no_mark(stage):
    pass


def _model_xp(model):
    return get_array_module(next(iter(model.state_dict().values())))


class StageTimer:
    """Seconds per stage of `train_step`, added into ``totals`` (a dict with the `STAGES` keys).

    Call `start` where the step begins (before fetching the batch: the "data" stage is the loader's
    wait plus the upload). With ``sync`` each stage first waits for the device, so that GPU stages
    get their own time (profiling: it costs the overlap of host and device work).
    """

    def __init__(self, totals: dict, sync: bool = False):
        self.totals = totals
        self.sync = sync
        self._t = time.perf_counter()

    def start(self) -> None:
        self._t = time.perf_counter()

    def mark(self, stage: str) -> None:
        if self.sync:
            synchronize()
        t = time.perf_counter()
        self.totals[stage] += t - self._t
        self._t = t


class BatchUpload:
    """Image batches to the device: through a reused page-locked (pinned) host buffer on CuPy.

    A copy from pinned memory is a DMA transfer that runs asynchronously on the current stream,
    where one from ordinary (pageable) memory first goes through a driver staging buffer and
    blocks the host. On the CPU (or without CuPy) the images pass through unchanged. The buffer is
    refilled only after the previous copy out of it has finished (a CUDA event).
    """

    def __init__(self, device: str):
        self.device = device
        self._pinned = None
        self._done = None

    def __call__(self, images):
        cp = cupy_module() if self.device == "cuda" else None
        if cp is None:
            return np.asarray(images)
        images = np.ascontiguousarray(images)
        buf = self._pinned
        if buf is None or buf.shape != images.shape or buf.dtype != images.dtype:
            buf = self._pinned = _empty_pinned(cp, images.shape, images.dtype)
            self._done = None
        if self._done is not None:
            self._done.synchronize()          # the last upload has left the buffer
        np.copyto(buf, images)
        x = cp.empty(images.shape, dtype=images.dtype)
        x.set(buf)                            # asynchronous: the source is pinned
        self._done = cp.cuda.Event(block=False, disable_timing=True)
        self._done.record()
        return x


def _empty_pinned(cp, shape, dtype):
    try:
        import cupyx  # optional: ships with CuPy

        return cupyx.empty_pinned(shape, dtype=dtype)
    except (ImportError, AttributeError):    # older CuPy: allocate and view the bytes
        size = int(np.prod(shape))
        mem = cp.cuda.alloc_pinned_memory(size * np.dtype(dtype).itemsize)
        return np.frombuffer(mem, dtype, size).reshape(shape)

"""Batches for training and evaluation: shuffled, augmented in background workers, exactly resumable.

The order and the augmentation are pure functions of (seed, epoch, index):

* epoch ``e`` visits the dataset in the order ``default_rng([seed, e]).permutation(n)`` (or 0..n-1
  without shuffling), in batches of ``batch_size``;
* the sample at dataset index ``i`` in epoch ``e`` is augmented with its own Generator
  ``default_rng([seed, e, i])``, not with a draw from a shared stream.

Data-parallel training (``world_size`` K > 1, one loader per process): ``batch_size`` is the global
batch B; every rank walks the same permutation and takes its contiguous slice ``[r B/K, (r+1) B/K)``
of each global batch. The shards are disjoint, their union in rank order is the one-process batch,
and the augmentation of an image does not depend on which rank draws it (docs/15-data-parallel.md).

So worker threads or processes can build batches in any order and the result is still the same, and
a loader restored from ``state_dict()`` (epoch, batches consumed in that epoch, seed) yields exactly
the batches an uninterrupted run would have yielded next, augmentation included.

Batches are numpy arrays on the host; the trainer moves them to the device at its edge.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """One batch.

    images : (N, 3, S, S) float32, normalised, channel-first.
    boxes : list of N (G_n, 4) float32 normalised xyxy in [0, 1].
    labels : list of N (G_n,) int64 in 1..C.
    ids : list of N str, the images' ids in their dataset.
    sizes : list of N (H, W), the original image sizes (to scale detections back to pixels).
    difficult : list of N (G_n,) bool (VOC difficult / COCO crowd).
    """

    images: np.ndarray
    boxes: list
    labels: list
    ids: list
    sizes: list
    difficult: list


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator that augments dataset item ``index`` in ``epoch``."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def make_batch(dataset, transform, indices, seed: int, epoch: int) -> Batch:
    """Read, augment and stack the samples ``indices`` (the work of one worker task)."""
    images, boxes, labels, ids, sizes, difficult = [], [], [], [], [], []
    for index in indices:
        sample = dataset.get(int(index))
        # The transform sees object indices 0..G-1 in place of the labels and hands back the kept
        # ones, so labels and difficult flags are selected by the same objects (a transform selects
        # labels, it never interprets them).
        objects = np.arange(len(sample.labels), dtype=np.int64)
        chw, boxes_n, kept = transform(sample.image, sample.boxes, objects, sample_rng(seed, epoch, index))
        kept = np.asarray(kept, np.int64)
        images.append(chw)
        boxes.append(np.asarray(boxes_n, np.float32).reshape(-1, 4))
        labels.append(np.asarray(sample.labels, np.int64)[kept])
        difficult.append(np.asarray(sample.difficult, bool)[kept])
        ids.append(sample.image_id)
        sizes.append(tuple(int(v) for v in sample.image.shape[:2]))
    return Batch(np.stack(images).astype(np.float32, copy=False), boxes, labels, ids, sizes, difficult)


# Process workers hold the dataset and transform once (set by the pool initializer), not per task.
_WORKER_STATE = {}


def _init_worker(dataset, transform):
    _WORKER_STATE["dataset"], _WORKER_STATE["transform"] = dataset, transform


def _make_batch_in_worker(indices, seed, epoch):
    return make_batch(_WORKER_STATE["dataset"], _WORKER_STATE["transform"], indices, seed, epoch)


class DataLoader:
    """Iterate a dataset in augmented batches.

    Parameters
    ----------
    dataset : has ``get(i) -> Sample`` and ``__len__``.
    batch_size : int.
    transform : ``(image, boxes_px, labels, rng) -> (chw, boxes normalised, labels)`` (TrainTransform,
        EvalTransform).
    shuffle : bool, a fresh permutation every epoch (default True).
    seed : int, fixes the order and the augmentation.
    num_workers : 0 builds batches in the calling thread; k > 0 uses k background workers.
    drop_last : bool, drop the last incomplete batch of an epoch (default True).
    prefetch : batches built ahead of the consumer (default 2 * max(1, num_workers)).
    worker_type : "thread" (default; numpy and Pillow release the GIL in their inner loops) or
        "process" (fork where the platform has it; the dataset and transform must be picklable
        elsewhere). Under MPI use threads: forking a process after MPI has started is unsafe.
    rank, world_size : this process's shard of each global batch of ``batch_size`` images (default
        0 of 1: the whole batch). ``batch_size`` must be a multiple of ``world_size``, and with
        ``world_size > 1`` ``drop_last`` must be True (every rank gets B / K images every step).

    ``for batch in loader`` runs the rest of the current epoch; ``loader.batches()`` runs forever,
    epoch after epoch (for an iteration-based trainer). ``len(loader)`` is batches per epoch.
    ``state_dict()`` / ``load_state_dict()`` record and restore (epoch, position, seed).
    """

    def __init__(self, dataset, batch_size: int, transform, shuffle: bool = True, seed: int = 0,
                 num_workers: int = 2, drop_last: bool = True, prefetch: int | None = None,
                 worker_type: str = "thread", rank: int = 0, world_size: int = 1):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if int(world_size) != world_size or world_size < 1:
            raise ValueError(f"world_size: expected a positive integer, got {world_size!r}")
        if int(rank) != rank or not 0 <= rank < world_size:
            raise ValueError(f"rank: expected an integer in [0, {world_size}), got {rank!r}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of world_size {world_size}: "
                             "every rank must draw the same number of images per step")
        if world_size > 1 and not drop_last:
            raise ValueError(f"drop_last: must be True with world_size {world_size} > 1 (a short last "
                             "batch would not split evenly across the ranks)")
        if int(num_workers) != num_workers or num_workers < 0:
            raise ValueError(f"num_workers: expected a non-negative integer, got {num_workers!r}")
        if worker_type not in ("thread", "process"):
            raise ValueError(f"worker_type: expected 'thread' or 'process', got {worker_type!r}")
        if prefetch is not None and (int(prefetch) != prefetch or prefetch < 1):
            raise ValueError(f"prefetch: expected a positive integer, got {prefetch!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.drop_last = bool(drop_last)
        self.prefetch = int(prefetch) if prefetch is not None else 2 * max(1, self.num_workers)
        self.worker_type = worker_type
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out
        if len(self) == 0:
            raise ValueError(f"dataset: {len(dataset)} samples make no batch of {batch_size}"
                             + (" with drop_last=True" if drop_last else ""))

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order epoch ``epoch`` visits them."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("epoch", "position", "seed"):
            if key not in state:
                raise ValueError(f"state: missing {key!r} (have {sorted(state)})")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise ValueError(f"state: epoch {epoch}, position {position} out of range ({len(self)} batches "
                             "per epoch)")
        self.seed, self.epoch, self.position = int(state["seed"]), epoch, position
        if self.position == len(self):
            self.epoch, self.position = self.epoch + 1, 0

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of one global batch's dataset indices (all of it for one rank)."""
        if self.world_size == 1:
            return indices
        per_rank = self.batch_size // self.world_size
        return indices[self.rank * per_rank:(self.rank + 1) * per_rank]

    def _tasks(self, forever: bool):
        """(epoch, position, indices) for the batches still to come, lazily (this rank's shard)."""
        epoch, position = self.epoch, self.position
        per_epoch = len(self)
        while True:
            order = self.order(epoch)
            for b in range(position, per_epoch):
                yield epoch, b, self.shard(order[b * self.batch_size:(b + 1) * self.batch_size])
            if not forever:
                return
            epoch, position = epoch + 1, 0

    def _executor(self):
        if self.num_workers == 0:
            return None
        if self.worker_type == "thread":
            return cf.ThreadPoolExecutor(self.num_workers, thread_name_prefix="minissd-loader")
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        return cf.ProcessPoolExecutor(self.num_workers, mp_context=context, initializer=_init_worker,
                                      initargs=(self.dataset, self.transform))

    def _submit(self, executor, indices, epoch):
        if executor is None:
            return None
        if self.worker_type == "thread":
            return executor.submit(make_batch, self.dataset, self.transform, indices, self.seed, epoch)
        return executor.submit(_make_batch_in_worker, indices, self.seed, epoch)

    def _run(self, forever: bool):
        per_epoch = len(self)
        tasks = self._tasks(forever)
        executor = self._executor()
        pending = collections.deque()  # (epoch, position, indices, future or None), in order
        try:
            while True:
                while len(pending) < (self.prefetch if executor else 1):
                    task = next(tasks, None)
                    if task is None:
                        break
                    epoch, b, indices = task
                    pending.append((epoch, b, indices, self._submit(executor, indices, epoch)))
                if not pending:
                    return
                epoch, b, indices, future = pending.popleft()
                batch = future.result() if future is not None else make_batch(
                    self.dataset, self.transform, indices, self.seed, epoch)
                # The state moves when a batch is handed out, so a checkpoint taken between two
                # batches resumes with the next one.
                self.epoch, self.position = (epoch, b + 1) if b + 1 < per_epoch else (epoch + 1, 0)
                yield batch
        finally:
            # Reached on exhaustion, on an exception (KeyboardInterrupt included) and when the
            # consumer drops the generator (break): no worker outlives the iteration.
            for *_, future in pending:
                if future is not None:
                    future.cancel()
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def __iter__(self):
        """The rest of the current epoch (all of it, when starting at its beginning)."""
        return self._run(forever=False)

    def batches(self):
        """Batches without end, epoch after epoch, from the current position."""
        return self._run(forever=True)

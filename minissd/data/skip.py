"""The policy for unreadable samples: stop with a clear error (default), or skip, count and log them.

A dataset's ``get(i)`` raises `DataError` (a ValueError carrying ``.path``) when sample ``i`` cannot
be read -- a missing, truncated or corrupt image, a mode that cannot be read, a size that differs
from its annotation. Nothing else raises it, so a trainer can catch exactly that, save its state and
stop with a message naming the file; or, when the user asked for it, wrap the dataset in
`SkipUnreadable`, which turns such samples into

* (training, ``substitute=True``) the next readable sample, i + 1, i + 2, ... wrapping around. The
  choice depends on the files only, so a run resumed from a checkpoint sees the same batches as an
  uninterrupted one, and every batch stays full;
* (evaluation, ``substitute=False``) a placeholder: a 1 x 1 white image without objects whose
  ``image_id`` `is_placeholder` recognises. The evaluator drops those images (their detections and
  their -- empty -- ground truth) before scoring, so that mAP is over the readable images, each
  counted once. Substituting another image would count that image twice.

Each unreadable sample is reported once to ``log`` (a callable taking one line of text; default: a
`BadDataWarning`) and counted in ``skipped`` ({index: message}); it is not read again. If no sample of
the dataset can be read, `get` raises ValueError: skipping everything is not training.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np

from ..imageio import DataError
from .annotations import BadDataWarning
from .sample import Sample, empty_targets

PLACEHOLDER_PREFIX = "<unreadable>#"


def is_placeholder(image_id) -> bool:
    """Whether ``image_id`` is that of a placeholder sample `SkipUnreadable` put in place of an
    unreadable one (evaluation mode)."""
    return isinstance(image_id, str) and image_id.startswith(PLACEHOLDER_PREFIX)


def _warn(message: str) -> None:
    warnings.warn(message, BadDataWarning, stacklevel=5)  # the caller of SkipUnreadable.get


class SkipUnreadable:
    """A dataset whose unreadable samples are skipped, counted and logged (see the module docstring).

    Parameters
    ----------
    dataset : has ``get(i) -> Sample`` and ``__len__``; raises DataError for an unreadable sample.
    log : callable(str) told once about each unreadable sample; None: a BadDataWarning.
    substitute : True (training): the next readable sample takes the place of an unreadable one;
        False (evaluation): a placeholder sample (`is_placeholder` of its image_id is true).

    Attributes
    ----------
    skipped : {dataset index: "path: reason"} of the unreadable samples met so far.
    substitutions : how many times a sample was replaced (each epoch counts again).

    Other attributes (class_names, ...) are the wrapped dataset's. Safe to share between loader
    threads. With process workers each process keeps its own counts.
    """

    def __init__(self, dataset, log=None, substitute: bool = True):
        self.dataset = dataset
        self.log = log
        self.substitute = bool(substitute)
        self.skipped = {}
        self.substitutions = 0
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getattr__(self, name):  # anything else (class_names, root, ...) comes from the wrapped dataset
        if name in ("dataset", "_lock", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return f"SkipUnreadable({self.dataset!r}, {len(self.skipped)} unreadable so far)"

    def _record(self, index: int, err: DataError) -> None:
        with self._lock:
            new = index not in self.skipped
            if new:
                self.skipped[index] = str(err)
            count = len(self.skipped)
        if new:
            action = "using the next readable image in its place" if self.substitute else "left out of the evaluation"
            (self.log or _warn)(f"unreadable image #{count} skipped ({action}): {err}")

    def _try(self, index: int):
        if index in self.skipped:
            return None
        try:
            return self.dataset.get(index)
        except DataError as err:
            self._record(index, err)
            return None

    def get(self, i: int) -> Sample:
        i = int(i)
        n = len(self.dataset)
        if not 0 <= i < n:
            raise IndexError(f"index {i} is outside the dataset's {n} samples")
        sample = self._try(i)
        if sample is not None:
            return sample
        if not self.substitute:
            boxes, labels, difficult = empty_targets()
            image = np.full((1, 1, 3), 255, np.uint8)
            return Sample(image, boxes, labels, difficult, f"{PLACEHOLDER_PREFIX}{i}")
        for step in range(1, n):
            sample = self._try((i + step) % n)
            if sample is not None:
                with self._lock:
                    self.substitutions += 1
                return sample
        raise ValueError(f"none of the {n} images of {self.dataset!r} can be read; e.g. {self.skipped[i]}")

    __getitem__ = get

    def summary(self) -> dict:
        """{"unreadable": count, "substitutions": count, "files": [messages, by dataset index]}."""
        with self._lock:
            return {"unreadable": len(self.skipped), "substitutions": self.substitutions,
                    "files": [self.skipped[k] for k in sorted(self.skipped)]}

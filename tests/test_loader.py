"""The loader: batch contract, deterministic order and augmentation, exact resume, clean shutdown."""
import threading

import numpy as np
import pytest

from minissd.data import Batch, DataLoader, EvalTransform, Sample, ShapesDataset, TrainTransform


def _same(a: Batch, b: Batch):
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.images, b.images)
    for x, y in zip(a.boxes + a.labels + a.difficult, b.boxes + b.labels + b.difficult, strict=True):
        np.testing.assert_array_equal(x, y)


class TinyDataset:
    """8 x 8 images; object k of image i has label 1 + (i + k) % 3 and is difficult when its label is 2."""

    class_names = ("a", "b", "c")

    def __init__(self, n=20, fail_at=None, exc=RuntimeError):
        self.n, self.fail_at, self.exc = n, fail_at, exc

    def __len__(self):
        return self.n

    def get(self, i):
        if i == self.fail_at:
            raise self.exc(f"cannot read sample {i}")
        image = np.full((8, 10, 3), i, np.uint8)
        g = i % 4
        boxes = np.array([[k, k, k + 4, k + 3] for k in range(g)], np.float32).reshape(-1, 4)
        labels = np.array([1 + (i + k) % 3 for k in range(g)], np.int64)
        return Sample(image, boxes, labels, labels == 2, f"img{i}")


class DropEveryOther:
    """A transform that keeps objects 0, 2, 4, ...: labels and difficult must stay paired."""

    def __call__(self, image, boxes, labels, rng):
        keep = np.arange(0, len(labels), 2)
        return (np.zeros((3, 4, 4), np.float32) + rng.random(), boxes[keep] / 10, labels[keep])


def test_batch_contract():
    ds = ShapesDataset("val", size=64, count=10)
    loader = DataLoader(ds, 4, TrainTransform(48), seed=1, num_workers=0)
    assert len(loader) == 2
    assert len(DataLoader(ds, 4, TrainTransform(48), drop_last=False, num_workers=0)) == 3
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert isinstance(b, Batch) and b.images.shape == (4, 3, 48, 48) and b.images.dtype == np.float32
    assert len(b.boxes) == len(b.labels) == len(b.ids) == len(b.sizes) == len(b.difficult) == 4
    assert all(s == (64, 64) for s in b.sizes)
    for boxes, labels, diff in zip(b.boxes, b.labels, b.difficult, strict=True):
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert labels.dtype == np.int64 and diff.dtype == bool and len(diff) == len(labels)
        assert np.all(boxes >= 0) and np.all(boxes <= 1)
    # One epoch visits every image once.
    all_ids = sorted(i for batch in list(DataLoader(ds, 5, EvalTransform(32), num_workers=0)) for i in batch.ids)
    assert all_ids == sorted(ds.image_id(i) for i in range(10))


def test_labels_and_difficult_stay_paired_when_the_transform_drops_objects():
    loader = DataLoader(TinyDataset(), 5, DropEveryOther(), num_workers=2)
    for batch in loader:
        for image_id, labels, diff in zip(batch.ids, batch.labels, batch.difficult, strict=True):
            i = int(image_id[3:])
            expected = np.array([1 + (i + k) % 3 for k in range(i % 4)])[::2]
            np.testing.assert_array_equal(labels, expected)
            np.testing.assert_array_equal(diff, expected == 2)


@pytest.mark.parametrize("workers, kind", [(0, "thread"), (2, "thread"), (2, "process")])
def test_same_seed_same_batches_whatever_the_workers(workers, kind):
    ds = ShapesDataset("val", size=48, count=12)
    reference = list(DataLoader(ds, 4, TrainTransform(32), seed=5, num_workers=0))
    got = list(DataLoader(ds, 4, TrainTransform(32), seed=5, num_workers=workers, worker_type=kind))
    assert len(got) == len(reference) == 3
    for a, b in zip(got, reference, strict=True):
        _same(a, b)
    other = list(DataLoader(ds, 4, TrainTransform(32), seed=6, num_workers=0))
    assert other[0].ids != reference[0].ids or not np.array_equal(other[0].images, reference[0].images)


def test_epochs_differ_and_batches_runs_forever():
    loader = DataLoader(TinyDataset(12), 4, DropEveryOther(), seed=0, num_workers=1)
    it = loader.batches()
    got = [next(it) for _ in range(7)]  # 3 per epoch: crosses two epoch boundaries
    it.close()
    assert loader.state_dict() == {"epoch": 2, "position": 1, "seed": 0}
    first, second = [b.ids for b in got[:3]], [b.ids for b in got[3:6]]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) and first != second
    # The same image gets a different augmentation in another epoch.
    by_id = {}
    for b in got[:6]:
        for k, image_id in enumerate(b.ids):
            by_id.setdefault(image_id, []).append(float(b.images[k, 0, 0, 0]))
    assert all(len(v) == 2 and v[0] != v[1] for v in by_id.values())


@pytest.mark.parametrize("stop_after", [2, 3, 4])
def test_resume_mid_epoch_gives_the_same_batches_and_augmentation(stop_after):
    ds = ShapesDataset("val", size=48, count=12)

    def make():
        return DataLoader(ds, 4, TrainTransform(32), seed=11, num_workers=2)

    uninterrupted = make().batches()
    reference = [next(uninterrupted) for _ in range(7)]
    uninterrupted.close()
    first = make()
    it = first.batches()
    for _ in range(stop_after):
        next(it)
    state = first.state_dict()
    it.close()
    resumed = make()
    resumed.load_state_dict(dict(state))
    it = resumed.batches()
    for expected in reference[stop_after:]:
        _same(next(it), expected)
    it.close()


def test_for_loop_runs_the_rest_of_the_epoch_and_state_moves_per_batch():
    loader = DataLoader(TinyDataset(12), 4, DropEveryOther(), num_workers=0)
    it = iter(loader)
    next(it)
    assert loader.state_dict()["position"] == 1
    it.close()
    rest = list(loader)
    assert len(rest) == 2 and loader.state_dict() == {"epoch": 1, "position": 0, "seed": 0}
    assert len(list(loader)) == 3 and loader.epoch == 2


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("minissd-loader")]


def test_break_and_errors_leave_no_worker_behind():
    loader = DataLoader(TinyDataset(40), 4, DropEveryOther(), num_workers=2)
    for i, _ in enumerate(loader.batches()):
        if i == 3:
            break
    assert not _loader_threads()
    failing = DataLoader(TinyDataset(40, fail_at=9), 4, DropEveryOther(), shuffle=False, num_workers=2)
    with pytest.raises(RuntimeError, match="sample 9"):
        for _ in failing:
            pass
    assert not _loader_threads()
    assert failing.state_dict()["position"] == 2  # the batches before the failing one were handed out
    interrupted = DataLoader(TinyDataset(40, fail_at=5, exc=KeyboardInterrupt), 4, DropEveryOther(),
                             shuffle=False, num_workers=2)
    with pytest.raises(KeyboardInterrupt):
        list(interrupted)
    assert not _loader_threads()


def test_bad_arguments():
    ds = TinyDataset(5)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, 0, DropEveryOther())
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(ds, 2, DropEveryOther(), num_workers=-1)
    with pytest.raises(ValueError, match="worker_type"):
        DataLoader(ds, 2, DropEveryOther(), worker_type="fiber")
    with pytest.raises(ValueError, match="dataset"):
        DataLoader(ds, 8, DropEveryOther())  # drop_last leaves no batch
    loader = DataLoader(ds, 2, DropEveryOther())
    with pytest.raises(ValueError, match="state"):
        loader.load_state_dict({"epoch": 0, "position": 3, "seed": 0})
    with pytest.raises(ValueError, match="state"):
        loader.load_state_dict({"epoch": 0})

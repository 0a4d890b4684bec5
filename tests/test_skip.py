"""The unreadable-sample policy: DataError by default, SkipUnreadable to skip, count and log."""
import os
import pickle
import warnings

import numpy as np
import pytest

from minissd.data import (
    BadDataWarning,
    DataError,
    DataLoader,
    EvalTransform,
    SkipUnreadable,
    TrainTransform,
    VOCDataset,
    is_placeholder,
)
from test_voc import _obj, _xml, make_voc


def corrupt(voc, image_id):
    path = os.path.join(voc, "JPEGImages", image_id + ".jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])  # truncated, as a copy interrupted half-way leaves it


@pytest.fixture
def voc(tmp_path):
    ids = [f"{k:03d}" for k in range(8)]
    root = make_voc(tmp_path, {i: _xml(i, [_obj("cat", (2, 2, 20, 20))]) for i in ids})
    corrupt(root, "002")
    corrupt(root, "005")
    return root


def test_without_the_wrapper_the_error_is_data_error_through_the_loader(voc):
    loader = DataLoader(VOCDataset(voc, "trainval"), 4, EvalTransform(32), shuffle=False, num_workers=2)
    with pytest.raises(DataError, match=r"002\.jpg: cannot read image") as info:
        list(loader)
    assert info.value.path.endswith("002.jpg")


def test_training_substitutes_the_next_readable_sample_logs_once_and_counts(voc):
    lines = []
    ds = SkipUnreadable(VOCDataset(voc, "trainval"), log=lines.append)
    assert len(ds) == 8 and ds.class_names == ds.dataset.class_names  # other attributes pass through
    assert ds.get(2).image_id == "003" and ds.get(5).image_id == "006"
    assert ds.get(2).image_id == "003"  # again: same answer, not logged again
    assert sorted(ds.skipped) == [2, 5] and ds.substitutions == 3
    assert len(lines) == 2 and "002.jpg" in lines[0] and "005.jpg" in lines[1] and "#2" in lines[1]
    summary = ds.summary()
    assert summary["unreadable"] == 2 and summary["substitutions"] == 3
    assert "002.jpg" in summary["files"][0] and "005.jpg" in summary["files"][1]


def test_substitution_wraps_around_and_gives_up_only_when_nothing_is_readable(tmp_path):
    root = make_voc(tmp_path, {i: _xml(i, []) for i in ("a", "b", "c")})
    corrupt(root, "c")
    ds = SkipUnreadable(VOCDataset(root, "trainval"), log=lambda line: None)
    assert ds.get(2).image_id == "a"
    corrupt(root, "a")
    corrupt(root, "b")
    ds = SkipUnreadable(VOCDataset(root, "trainval"), log=lambda line: None)
    with pytest.raises(ValueError, match="none of the 3 images .* can be read"):
        ds.get(0)
    with pytest.raises(IndexError):
        ds.get(3)


def test_batches_are_full_and_the_same_across_a_resume(voc):
    def loader():
        ds = SkipUnreadable(VOCDataset(voc, "trainval"), log=lambda line: None)
        return ds, DataLoader(ds, 4, TrainTransform(32), seed=3, num_workers=2)

    ds, full = loader()
    it = full.batches()
    batches = [next(it) for _ in range(4)]
    assert all(len(b.ids) == 4 for b in batches)
    assert not {"002", "005"} & {i for b in batches for i in b.ids}
    assert sorted(ds.skipped) == [2, 5]
    _, first = loader()
    it = first.batches()
    next(it), next(it)
    state = first.state_dict()
    it.close()
    _, resumed = loader()
    resumed.load_state_dict(state)
    it = resumed.batches()
    for expected in batches[2:]:
        got = next(it)
        assert got.ids == expected.ids
        np.testing.assert_array_equal(got.images, expected.images)
    it.close()


def test_evaluation_gets_placeholders_not_duplicates(voc):
    ds = SkipUnreadable(VOCDataset(voc, "trainval"), log=lambda line: None, substitute=False)
    loader = DataLoader(ds, 3, EvalTransform(32), shuffle=False, num_workers=0, drop_last=False)
    ids = [i for batch in loader for i in batch.ids]
    assert len(ids) == 8
    kept = [i for i in ids if not is_placeholder(i)]
    assert kept == ["000", "001", "003", "004", "006", "007"]  # each readable image once, none twice
    placeholder = ds.get(2)
    assert is_placeholder(placeholder.image_id) and placeholder.boxes.shape == (0, 4)
    assert placeholder.image.shape == (1, 1, 3)
    assert ds.substitutions == 0 and sorted(ds.skipped) == [2, 5]
    assert not is_placeholder("002") and not is_placeholder(None)


def test_default_log_is_a_bad_data_warning(voc):
    ds = SkipUnreadable(VOCDataset(voc, "trainval"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.get(2)
    assert len(caught) == 1 and issubclass(caught[0].category, BadDataWarning)
    assert caught[0].filename == __file__  # points at the caller, not into minissd
    assert "002.jpg" in str(caught[0].message)


def test_other_errors_are_not_swallowed(voc):
    class Broken:
        def __len__(self):
            return 2

        def get(self, i):
            raise RuntimeError("a bug, not bad data")

    with pytest.raises(RuntimeError, match="a bug"):
        SkipUnreadable(Broken(), log=lambda line: None).get(0)


def test_pickles_for_process_workers(voc):
    ds = SkipUnreadable(VOCDataset(voc, "trainval"), log=None)  # the default log pickles; a lambda would not
    with pytest.warns(BadDataWarning, match="002.jpg"):
        ds.get(2)
    back = pickle.loads(pickle.dumps(ds))
    with pytest.warns(BadDataWarning, match="005.jpg"):
        assert sorted(back.skipped) == [2] and back.get(5).image_id == "006"

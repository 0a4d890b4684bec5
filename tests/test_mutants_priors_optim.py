"""Tests added after mutation testing of minissd/priors.py and minissd/optim.py (tests/MUTATION.md):
each kills mutants that survived tests/test_priors.py and tests/test_optim.py."""
import math

import numpy as np
import pytest

from minissd.optim import WarmupCosine, WarmupMultiStep
from minissd.priors import PriorConfig


# -- PriorConfig.from_scales (paper eq. (4)) ---------------------------------------------------------
def test_from_scales_with_two_maps_spaces_the_ends():
    """Two maps are enough for eq. (4): s_1 = s_min, s_2 = s_max, s_3 continues the line."""
    cfg = PriorConfig.from_scales(100, (10, 5), ((2,), (2,)), s_min=0.2, s_max=0.6)
    np.testing.assert_allclose(cfg.min_sizes, (20.0, 60.0))
    np.testing.assert_allclose(cfg.max_sizes, (60.0, 100.0))
    cfg = PriorConfig.from_scales(100, (20, 10, 5), ((2,), (2,), (2,)), s_min=0.2, s_max=0.6, first_scale=0.1)
    np.testing.assert_allclose(cfg.min_sizes, (10.0, 20.0, 60.0))
    np.testing.assert_allclose(cfg.max_sizes, (20.0, 60.0, 100.0))
    with pytest.raises(ValueError, match="at least two maps"):
        PriorConfig.from_scales(100, (10,), ((2,),))
    with pytest.raises(ValueError, match="at least two maps"):
        PriorConfig.from_scales(100, (20, 10), ((2,), (2,)), first_scale=0.1)


def test_from_scales_default_steps_name_and_options():
    """Without ``steps`` each map's step is image_size / map size; the name defaults to 'eq4'; the other
    keyword options (clip, flip, offset, name) reach the config."""
    cfg = PriorConfig.from_scales(300, (38, 19, 10), ((2,), (2, 3), (2,)))
    np.testing.assert_allclose(cfg.steps, (300 / 38, 300 / 19, 30.0))
    assert cfg.name == "eq4"
    assert cfg.offset == 0.5 and cfg.flip is True     # the dataclass defaults, for the contrast below
    other = PriorConfig.from_scales(300, (38, 19, 10), ((2,), (2, 3), (2,)), clip=not cfg.clip, flip=False,
                                    offset=0.25, name="mine")
    assert (other.clip, other.flip, other.offset, other.name) == (not cfg.clip, False, 0.25, "mine")


# -- WarmupCosine: its arguments are checked and named ----------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(base_lr=-0.1, warmup_iters=0, total_iters=10), "base_lr must be a finite number >= 0.0"),
    (dict(base_lr="0.1", warmup_iters=0, total_iters=10), "base_lr must be a number"),
    (dict(base_lr=0.1, warmup_iters=-1, total_iters=10), "warmup_iters must be a finite number >= 0.0"),
    (dict(base_lr=0.1, warmup_iters=0.0, total_iters=0.5), "total_iters must be a finite number >= 1"),
    (dict(base_lr=0.1, warmup_iters=0, total_iters=math.inf), "total_iters must be a finite number >= 1"),
    (dict(base_lr=0.1, warmup_iters=0, total_iters=10, min_lr=-1e-3), "min_lr must be a finite number >= 0.0"),
    (dict(base_lr=0.1, warmup_iters=5, total_iters=5), r"total_iters \(5\) must exceed warmup_iters \(5\)"),
])
def test_warmup_cosine_names_its_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        WarmupCosine(**kwargs)


def test_warmup_cosine_accepts_one_iteration_and_min_lr():
    s = WarmupCosine(0.1, 0, 1, min_lr=0.01)            # total_iters = 1 is the smallest allowed
    assert s.total_iters == 1 and s(0) == pytest.approx(0.1) and s(1) == pytest.approx(0.01)


@pytest.mark.parametrize("kwargs, message", [
    (dict(base_lr=-0.1), "base_lr must be a finite number >= 0.0"),
    (dict(base_lr=0.1, warmup_iters=math.nan), "warmup_iters must be a finite number >= 0.0"),
    (dict(base_lr=0.1, milestones=(10, "20")), "milestone must be a number"),
    (dict(base_lr=0.1, milestones=(10, -20)), "milestone must be a finite number >= 0.0"),
    (dict(base_lr=0.1, gamma=-0.5), "gamma must be a finite number >= 0.0"),
])
def test_warmup_multistep_names_its_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        WarmupMultiStep(**kwargs)

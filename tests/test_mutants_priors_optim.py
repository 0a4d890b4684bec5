"""Tests added after mutation testing of minissd/priors.py and minissd/optim.py (tests/MUTATION.md):
each kills mutants that survived tests/test_priors.py and tests/test_optim.py."""
import math

import numpy as np
import pytest

from minissd.nn import Conv2d, Sequential
from minissd.optim import SGD, WarmupCosine, WarmupMultiStep
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


def test_prior_config_dict_round_trip_keeps_every_field():
    cfg = PriorConfig.from_scales(300, (38, 19, 10), ((2,), (2, 3), (2,)), clip=True, flip=False, offset=0.25,
                                  name="mine")
    d = cfg.to_dict()
    assert (d["clip"], d["flip"], d["offset"], d["name"]) == (True, False, 0.25, "mine")
    back = PriorConfig.from_dict(d)
    assert back == cfg and back.name == "mine"


# -- SGD state: hyper-parameters travel with the buffers, and the buffers are copied -------------------
def _net(seed):
    rng = np.random.default_rng(seed)
    net = Sequential([("conv", Conv2d(2, 3, 3, rng=rng))]).astype(np.float64)
    for _, p, _ in net.named_parameters():
        p[...] = rng.standard_normal(p.shape)
    return net


def _steps(net, opt, n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        for _, _, g in net.named_parameters():
            g[...] = rng.standard_normal(g.shape)
        opt.step()


def test_sgd_state_carries_its_hyper_parameters():
    net = _net(0)
    opt = SGD(net, lr=0.07, momentum=0.5, weight_decay=1e-3)
    _steps(net, opt, 3, 1)
    state = opt.state_dict()
    assert (state["lr"], state["momentum"], state["weight_decay"], state["iteration"]) == (0.07, 0.5, 1e-3, 3)
    other = SGD(_net(0), lr=1.0)                                  # momentum 0.9, decay 5e-4 by default
    other.load_state_dict(state)
    assert (other.lr, other.momentum, other.weight_decay, other.iteration) == (0.07, 0.5, 1e-3, 3)


def test_sgd_state_without_hyper_parameters_keeps_the_optimisers_own():
    net = _net(0)
    opt = SGD(net, lr=0.3, momentum=0.8, weight_decay=2e-3)
    _steps(net, opt, 2, 1)
    buffers = {n: b.copy() for n, b in opt.state_dict()["buffers"].items()}
    opt.load_state_dict({"buffers": buffers})
    assert (opt.lr, opt.momentum, opt.weight_decay, opt.iteration) == (0.3, 0.8, 2e-3, 0)


def test_sgd_load_state_dict_copies_the_buffers():
    """Steps after a resume must not write into the state that was loaded (it may be reused)."""
    net = _net(0)
    opt = SGD(net, lr=0.1)
    _steps(net, opt, 2, 1)
    saved = {"buffers": {n: b.copy() for n, b in opt.state_dict()["buffers"].items()}}
    before = {n: b.copy() for n, b in saved["buffers"].items()}
    opt.load_state_dict(saved)
    _steps(net, opt, 2, 2)
    for n, b in saved["buffers"].items():
        np.testing.assert_array_equal(b, before[n], err_msg=n)

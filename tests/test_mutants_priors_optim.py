"""Tests added after mutation testing of minissd/priors.py and minissd/optim.py (tests/MUTATION.md):
each kills mutants that survived tests/test_priors.py and tests/test_optim.py."""
import math
import re

import numpy as np
import pytest

from minissd.nn import Conv2d, Sequential
from minissd.optim import SGD, WarmupCosine, WarmupMultiStep, is_bias
from minissd.priors import PRIOR_CONFIGS, PriorConfig, make_priors


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


# -- PriorConfig.validate: the edges of what is accepted ----------------------------------------------
def _one_map(**change):
    """A one-map config, with ``change`` applied."""
    d = dict(image_size=100, feature_maps=(4,), steps=(25,), min_sizes=(20,), max_sizes=(40,),
             aspect_ratios=((2,),))
    d.update(change)
    return PriorConfig(**d)


def test_smallest_valid_configs_are_accepted():
    """One map, a 1-pixel image, sizes and steps below 1 pixel, a ratio below 1, offsets 0 and 1."""
    assert _one_map().feature_maps == (4,)
    cfg = _one_map(image_size=1, feature_maps=(1,), steps=(0.5,), min_sizes=(0.25,), max_sizes=(0.5,),
                   aspect_ratios=((0.5,),), flip=False)
    np.testing.assert_allclose(make_priors(cfg), [[0.25, 0.25, 0.25, 0.25],
                                                  [0.25, 0.25, math.sqrt(0.125), math.sqrt(0.125)],
                                                  [0.25, 0.25, 0.25 * math.sqrt(0.5), 0.25 / math.sqrt(0.5)]])
    assert _one_map(offset=0.0).offset == 0.0 and _one_map(offset=1.0).offset == 1.0
    np.testing.assert_allclose(make_priors(_one_map(offset=0.0))[0, :2], [0.0, 0.0])
    np.testing.assert_allclose(make_priors(_one_map(offset=1.0))[0, :2], [0.25, 0.25])


@pytest.mark.parametrize("change, message", [
    (dict(feature_maps=(), steps=(), min_sizes=(), max_sizes=(), aspect_ratios=()), "feature_maps is empty"),
    (dict(steps=(0,)), "steps must be positive finite numbers, got 0"),
    (dict(min_sizes=(0.0,)), "min_sizes must be positive finite numbers, got 0.0"),
])
def test_empty_or_zero_configs_are_refused(change, message):
    with pytest.raises(ValueError, match="^PriorConfig." + re.escape(message)):
        _one_map(**change)


# -- make_priors with clip: each box is cut to the image in corner form --------------------------------
def _clip_corners(boxes):
    """Independent reference: intersect each cxcywh box with [0, 1]^2, box by box."""
    out = []
    for cx, cy, w, h in boxes:
        x1, x2 = min(max(cx - w / 2, 0.0), 1.0), min(max(cx + w / 2, 0.0), 1.0)
        y1, y2 = min(max(cy - h / 2, 0.0), 1.0), min(max(cy + h / 2, 0.0), 1.0)
        out.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    return np.array(out)


def _centres_outside():
    """Centres at 0.4 and 1.2: a step of 80 px on a 2x2 map of a 100 px image puts the second column and
    row past the edge; its boxes shrink to zero width there (x1 = x2 = 1)."""
    return PriorConfig(image_size=100, feature_maps=(2,), steps=(80,), min_sizes=(30,), max_sizes=(90,),
                       aspect_ratios=((3,),))


@pytest.mark.parametrize("name", ["ssd300", "centres-outside"])
def test_clip_intersects_every_box_with_the_image(name):
    cfg = PRIOR_CONFIGS["ssd300"] if name == "ssd300" else _centres_outside()
    raw = make_priors(cfg)
    clipped = make_priors(PriorConfig(**{**cfg.to_dict(), "clip": True}))
    assert clipped.shape == raw.shape and clipped.dtype == np.float64
    np.testing.assert_allclose(clipped, _clip_corners(raw), rtol=0, atol=1e-15)


# -- SGD: defaults, argument names, groups given as a list, partial multipliers ------------------------
def test_sgd_defaults_are_the_papers():
    """momentum 0.9 and weight decay 5e-4 (paper section 3) when not given."""
    opt = SGD(_net(0), lr=0.1)
    assert (opt.momentum, opt.weight_decay) == (0.9, 5e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_decay=-1e-4), "weight_decay must be a finite number >= 0.0"),
    (dict(groups={is_bias: {"lr_mult": -2.0}}), "lr_mult must be a finite number >= 0.0"),
    (dict(groups={is_bias: {"decay_mult": "0"}}), "decay_mult must be a number"),
])
def test_sgd_names_its_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match="^" + message):
        SGD(_net(0), lr=0.1, **kwargs)


def test_sgd_groups_as_a_list_of_pairs_and_partial_multipliers():
    """groups may be a list of (predicate, multipliers); a multiplier left out is 1."""
    opt = SGD(_net(0), lr=0.1, groups=[(is_bias, {"lr_mult": 3.0}), (lambda n: n.endswith(".W"),
                                                                       {"decay_mult": 0.5})])
    assert opt.multipliers("conv.b") == (3.0, 1.0)
    assert opt.multipliers("conv.W") == (1.0, 0.5)
    assert opt.multipliers("other") == (1.0, 1.0)


@pytest.mark.parametrize("key, value, message", [
    ("momentum", -0.5, "momentum must be a finite number >= 0.0"),
    ("momentum", "0.9", "momentum must be a number"),
    ("weight_decay", math.inf, "weight_decay must be a finite number >= 0.0"),
])
def test_sgd_load_state_dict_names_a_bad_hyper_parameter(key, value, message):
    opt = SGD(_net(0), lr=0.1)
    state = dict(opt.state_dict(), **{key: value})
    with pytest.raises(ValueError, match="^" + message):
        opt.load_state_dict(state)


# -- schedules: default arguments ---------------------------------------------------------------------
def test_schedule_defaults():
    """WarmupMultiStep divides by 10 at a milestone by default; WarmupCosine decays to 0 by default."""
    s = WarmupMultiStep(0.1, milestones=[5])
    assert s(4) == pytest.approx(0.1) and s(5) == pytest.approx(0.01)
    c = WarmupCosine(0.1, 0, 10)
    assert c.min_lr == 0.0 and c(10) == pytest.approx(0.0, abs=1e-15)

"""SGD (Caffe's momentum form, groups, exact resume) and the schedules; torch.optim.SGD as the oracle."""
import itertools
import math

import numpy as np
import pytest

from conftest import requires_torch
from minissd.backend import to_cpu
from minissd.nn import Conv2d, L2Norm, Sequential
from minissd.optim import CAFFE_GROUPS, SGD, WarmupCosine, WarmupMultiStep, is_bias


def _model(rng, dtype=np.float64):
    net = Sequential([("conv1", Conv2d(2, 3, 3, rng=rng)), ("norm", L2Norm(3)),
                      ("conv2", Conv2d(3, 2, 1, rng=rng))]).astype(dtype)
    for _, p, _ in net.named_parameters():
        p[...] = rng.standard_normal(p.shape)
    return net


def _fake_grads(net, rng):
    for _, _, g in net.named_parameters():
        g[...] = rng.standard_normal(g.shape)


def test_one_step_by_hand():
    # w = 2, g = 1, lr 0.1, momentum 0.9, decay 0.5: v1 = 0.1 * (1 + 0.5 * 2) = 0.2, w1 = 1.8;
    # step 2 with g = 1: v2 = 0.9 * 0.2 + 0.1 * (1 + 0.5 * 1.8) = 0.37, w2 = 1.43
    net = Sequential([("norm", L2Norm(1))]).astype(np.float64)
    net["norm"].params["weight"][...] = 2.0
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.5)
    for expected in (1.8, 1.43):
        net["norm"].grads["weight"][...] = 1.0
        opt.step()
        np.testing.assert_allclose(net["norm"].params["weight"], [expected], rtol=1e-14)
    assert opt.iteration == 2


def test_caffe_groups_double_bias_lr_and_skip_its_decay(rng):
    net = _model(rng)
    opt = SGD(net, lr=0.1, momentum=0.0, weight_decay=0.5, groups="caffe")
    before = {n: p.copy() for n, p, _ in net.named_parameters()}
    _fake_grads(net, rng)
    grads = {n: g.copy() for n, _, g in net.named_parameters()}
    opt.step()
    for name, p, _ in net.named_parameters():
        if is_bias(name):
            expected = before[name] - 0.2 * grads[name]
        else:
            expected = before[name] - 0.1 * (grads[name] + 0.5 * before[name])
        np.testing.assert_allclose(p, expected, rtol=1e-13, err_msg=name)
    assert opt.multipliers("conv1.b") == (2.0, 0.0)
    assert opt.multipliers("conv1.W") == (1.0, 1.0)
    assert opt.multipliers("norm.weight") == (1.0, 1.0)
    assert is_bias("b") and not is_bias("conv1.bias_like") and not is_bias("conv1.W")


@requires_torch
@pytest.mark.parametrize("groups", [None, "caffe"])
def test_matches_torch_sgd_at_constant_lr(groups, rng):
    import torch

    net = _model(rng)
    named = [(n, p) for n, p, _ in net.named_parameters()]
    tparams = {n: torch.tensor(p.copy(), requires_grad=True) for n, p in named}
    if groups == "caffe":
        tgroups = [{"params": [tparams[n] for n, _ in named if not is_bias(n)]},
                   {"params": [tparams[n] for n, _ in named if is_bias(n)], "lr": 0.02, "weight_decay": 0.0}]
    else:
        tgroups = [{"params": list(tparams.values())}]
    topt = torch.optim.SGD(tgroups, lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt = SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4, groups=groups)
    for _ in range(6):
        _fake_grads(net, rng)
        for n, _, g in net.named_parameters():
            tparams[n].grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for n, p, _ in net.named_parameters():
        np.testing.assert_allclose(p, tparams[n].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=n)


@requires_torch
def test_differs_from_torch_only_after_an_lr_change_as_documented(rng):
    """After lr drops from 0.1 to 0.01, Caffe's step is m*v + lr_new*g; torch's is lr_new*(m*b + g)."""
    import torch

    net = Sequential([("norm", L2Norm(4))]).astype(np.float64)
    w = net["norm"].params["weight"]
    wt = torch.tensor(w.copy(), requires_grad=True)
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.0)
    topt = torch.optim.SGD([wt], lr=0.1, momentum=0.9)
    g1, g2 = rng.standard_normal(4), rng.standard_normal(4)
    for g, lr in ((g1, 0.1), (g2, 0.01)):
        opt.lr = lr
        for group in topt.param_groups:
            group["lr"] = lr
        net["norm"].grads["weight"][...] = g
        wt.grad = torch.tensor(g)
        opt.step()
        topt.step()
    w0 = 20.0
    np.testing.assert_allclose(w, w0 - 0.1 * g1 - (0.9 * 0.1 * g1 + 0.01 * g2), rtol=1e-14)   # Caffe
    np.testing.assert_allclose(wt.detach().numpy(), w0 - 0.1 * g1 - 0.01 * (0.9 * g1 + g2), rtol=1e-14)
    assert not np.allclose(w, wt.detach().numpy())


def test_state_dict_gives_exact_resume(rng):
    net_a = _model(rng)
    net_b = _model(np.random.default_rng(1))
    net_b.load_state_dict({k: v.copy() for k, v in net_a.state_dict().items()})
    opt_a = SGD(net_a, lr=0.05, groups=CAFFE_GROUPS)
    seeds = list(range(8))
    for seed in seeds[:4]:
        _fake_grads(net_a, np.random.default_rng(seed))
        opt_a.step()
    saved = dict(opt_a.state_dict())
    saved["buffers"] = {n: b.copy() for n, b in saved["buffers"].items()}   # state_dict does not copy
    params = {k: v.copy() for k, v in net_a.state_dict().items()}
    for seed in seeds[4:]:
        _fake_grads(net_a, np.random.default_rng(seed))
        opt_a.step()
    # resume from the snapshot in another model/optimiser
    net_b.load_state_dict(params)
    opt_b = SGD(net_b, lr=1.0, groups=CAFFE_GROUPS)
    opt_b.load_state_dict(saved)
    assert opt_b.lr == 0.05 and opt_b.iteration == 4
    for seed in seeds[4:]:
        _fake_grads(net_b, np.random.default_rng(seed))
        opt_b.step()
    for (n, pa, _), (_, pb, _) in zip(net_a.named_parameters(), net_b.named_parameters(), strict=True):
        np.testing.assert_array_equal(pa, pb, err_msg=n)


def test_load_state_dict_rejects_mismatches(rng):
    net = _model(rng)
    opt = SGD(net, lr=0.1)
    state = opt.state_dict()
    bad = dict(state, buffers={k: v for k, v in state["buffers"].items() if k != "conv1.W"})
    with pytest.raises(ValueError, match="missing the momentum buffer of 'conv1.W'"):
        opt.load_state_dict(bad)
    bad = dict(state, buffers=dict(state["buffers"], extra=np.zeros(1)))
    with pytest.raises(ValueError, match="unknown parameter 'extra'"):
        opt.load_state_dict(bad)
    bad = dict(state, buffers=dict(state["buffers"], **{"conv1.b": np.zeros(7)}))
    with pytest.raises(ValueError, match=r"'conv1.b' has shape \(7,\)"):
        opt.load_state_dict(bad)


def test_buffers_follow_dtype_changes(rng):
    net = _model(rng, dtype=np.float32)
    opt = SGD(net, lr=0.1)
    net.astype(np.float64)
    _fake_grads(net, rng)
    opt.step()
    assert all(b.dtype == np.float64 for b in opt.buffers.values())


def test_step_on_device(xp, rng):
    """Three steps on the array's device against Caffe's update written out here by hand (biases: lr x2,
    no decay), so the numpy case checks the optimiser too, not the CPU path against itself."""
    net_dev = _model(np.random.default_rng(3))
    w = {n: p.copy() for n, p, _ in net_dev.named_parameters()}
    v = {n: np.zeros_like(p) for n, p in w.items()}
    net_dev.to("cuda" if xp is not np else "cpu")
    lr, momentum, decay = 0.1, 0.9, 5e-4
    opt_dev = SGD(net_dev, lr=lr, momentum=momentum, weight_decay=decay, groups="caffe")
    g = np.random.default_rng(7)
    for _ in range(3):
        for n, _, gd in net_dev.named_parameters():
            grad = g.standard_normal(gd.shape)
            gd[...] = xp.asarray(grad)
            lr_mult, decay_mult = (2.0, 0.0) if n.endswith(".b") else (1.0, 1.0)
            v[n] = momentum * v[n] + lr * lr_mult * (grad + decay * decay_mult * w[n])
            w[n] = w[n] - v[n]
        opt_dev.step()
    names = [n for n, _, _ in net_dev.named_parameters()]
    assert sum(n.endswith(".b") for n in names) == 2                   # both biases took the bias branch
    for n, pd, _ in net_dev.named_parameters():
        np.testing.assert_allclose(to_cpu(pd), w[n], rtol=1e-13, atol=1e-15, err_msg=n)


def test_bad_arguments(rng):
    net = _model(rng)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        SGD(net, lr=-1.0)
    with pytest.raises(ValueError, match="momentum must be a number"):
        SGD(net, lr=0.1, momentum="0.9")
    with pytest.raises(ValueError, match="predicate"):
        SGD(net, lr=0.1, groups={"b": {"lr_mult": 2}})
    with pytest.raises(ValueError, match="unknown multiplier 'lr'"):
        SGD(net, lr=0.1, groups={is_bias: {"lr": 2}})
    opt = SGD(net, lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = float("nan")


# ---------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------
def test_warmup_multistep_values():
    s = WarmupMultiStep(1e-3, warmup_iters=4, milestones=[10, 20], gamma=0.1)
    assert [s(i) for i in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert s(4) == pytest.approx(1e-3) and s(9) == pytest.approx(1e-3)
    assert s(10) == pytest.approx(1e-4) and s(19) == pytest.approx(1e-4)
    assert s(20) == pytest.approx(1e-5) and s.schedule(10**6) == pytest.approx(1e-5)
    assert WarmupMultiStep(0.1)(0) == 0.1


def test_warmup_cosine_values():
    s = WarmupCosine(0.1, warmup_iters=2, total_iters=12, min_lr=0.0)
    assert s(0) == pytest.approx(0.05) and s(1) == pytest.approx(0.1)
    assert s(2) == pytest.approx(0.1)
    assert s(7) == pytest.approx(0.05)                                     # half way: cos(pi/2) = 0
    assert s(12) == pytest.approx(0.0, abs=1e-15) and s(100) == pytest.approx(0.0, abs=1e-15)
    values = [s(i) for i in range(2, 13)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert WarmupCosine(1.0, 0, 4, min_lr=0.5)(2) == pytest.approx(0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_schedules_reject_bad_arguments():
    with pytest.raises(ValueError, match="milestones must be increasing"):
        WarmupMultiStep(0.1, 0, [20, 10])
    with pytest.raises(ValueError, match="must exceed warmup_iters"):
        WarmupCosine(0.1, 10, 10)
    with pytest.raises(ValueError, match="iteration must be >= 0"):
        WarmupMultiStep(0.1)(-1)


class _DeviceArray:
    """Stands in for a CuPy array: like CuPy, it refuses NumPy's implicit conversion (TypeError)."""

    def __init__(self, a):
        self._a = np.array(a)
        self.shape, self.dtype = self._a.shape, self._a.dtype

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")

    def get(self):
        return self._a.copy()


@pytest.fixture
def fake_gpu(monkeypatch):
    """backend treats `_DeviceArray` as the GPU array type (to_cpu copies it back with asnumpy)."""
    from types import SimpleNamespace

    from minissd import backend
    monkeypatch.setattr(backend, "_cupy", SimpleNamespace(ndarray=_DeviceArray, asnumpy=lambda a: a.get()))


def test_gpu_momentum_moves_to_a_cpu_model_through_to_cpu(rng, fake_gpu):
    # model.to("cpu") after training on the GPU: the buffers still live on the device until the next step
    net_a, net_b = _model(np.random.default_rng(4)), _model(np.random.default_rng(4))
    opt_a, opt_b = SGD(net_a, lr=0.1), SGD(net_b, lr=0.1)
    for name, v in opt_a.buffers.items():
        v[...] = rng.standard_normal(v.shape)
        opt_b.buffers[name] = _DeviceArray(v)
    for net in (net_a, net_b):
        _fake_grads(net, np.random.default_rng(5))
    opt_a.step()
    opt_b.step()
    assert all(type(b) is np.ndarray for b in opt_b.buffers.values())
    for (n, pa, _), (_, pb, _) in zip(net_a.named_parameters(), net_b.named_parameters(), strict=True):
        np.testing.assert_array_equal(pa, pb, err_msg=n)


def test_load_state_dict_copies_gpu_buffers_to_a_cpu_model(rng, fake_gpu):
    net = _model(rng, dtype=np.float32)
    opt = SGD(net, lr=0.1)
    want = {n: rng.standard_normal(b.shape) for n, b in opt.buffers.items()}
    opt.load_state_dict(dict(opt.state_dict(), buffers={n: _DeviceArray(w) for n, w in want.items()}))
    for n, b in opt.buffers.items():
        assert type(b) is np.ndarray and b.dtype == np.float32
        np.testing.assert_array_equal(b, want[n].astype(np.float32), err_msg=n)

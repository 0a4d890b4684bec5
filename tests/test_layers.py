"""ReLU, MaxPool2d, L2Norm: kernels == NumPy twins, float64 gradient checks, PyTorch cross-checks."""

import numpy as np
import pytest

from conftest import given, requires_torch, settings, st
from minissd.backend import to_cpu
from minissd.nn import (
    Conv2d,
    L2Norm,
    MaxPool2d,
    ReLU,
    Sequential,
    l2norm_backward_ref,
    l2norm_forward_ref,
    maxpool_backward_ref,
    maxpool_forward_ref,
    pool_output_size,
    relu_backward_ref,
    relu_forward_ref,
)
from minissd.nn import threads as threads_mod
from minissd.testing import check_layer_gradients, directional_check


def _away_from_zero(rng, shape, margin=0.05):
    """Normal samples pushed out of (-margin, margin): no ReLU kink within the finite-difference step."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


def _scaled_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ---------------------------------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------------------------------
def test_relu_by_hand():
    relu = ReLU()
    x = np.array([[-2.0, -0.0, 0.0, 3.0, np.nan]])
    y = relu.forward(x)
    np.testing.assert_array_equal(y[0, :4], [0, 0, 0, 3])
    assert np.isnan(y[0, 4])                                   # NaN passes, as in torch.relu
    dx = relu.backward(np.array([[1.0, 1.0, 1.0, 5.0, 1.0]]))
    np.testing.assert_array_equal(dx, [[0, 0, 0, 5, 0]])       # subgradient 0 at the kink


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 9), (70001,)])
def test_relu_gradients(shape, rng):
    relu = ReLU()
    if np.prod(shape) > 1000:           # large: one directional derivative instead of every entry
        x = _away_from_zero(rng, shape)
        r = rng.standard_normal(shape)

        def loss_and_grads():
            y = relu.forward(x)
            return float(np.sum(y * r)), [relu.backward(r)]

        directional_check(loss_and_grads, [x], rng)
    else:
        check_layer_gradients(relu, _away_from_zero(rng, shape), rng)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 9), (70001,), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_reference(shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[:3] = 0.0                                  # the kink: gradient 0 in both
    dy = rng.standard_normal(shape).astype(dtype)
    relu = ReLU()
    y = relu.forward(x)
    np.testing.assert_array_equal(y, relu_forward_ref(x))
    np.testing.assert_array_equal(relu.backward(dy), relu_backward_ref(x, dy))
    assert relu_forward_ref(x).dtype == dtype and relu_backward_ref(x, dy).dtype == dtype


def test_relu_inplace_and_dtypes(rng):
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
        expected = np.maximum(x, 0)
        out = ReLU().forward(x)
        assert out.dtype == dtype and out is not x
        np.testing.assert_array_equal(out, expected)
        y = ReLU(inplace=True).forward(x)
        assert y is x
        np.testing.assert_array_equal(x, expected)


def test_relu_on_device(xp, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    relu = ReLU()
    np.testing.assert_array_equal(to_cpu(relu.forward(xp.asarray(x))), np.maximum(x, 0))
    np.testing.assert_array_equal(to_cpu(relu.backward(xp.asarray(dy))), dy * (x > 0))


@requires_torch
def test_relu_matches_torch(rng):
    import torch

    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    relu = ReLU()
    y = relu.forward(x)
    dx = relu.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def test_relu_rejects_bad_input():
    with pytest.raises(ValueError, match=r"ReLU: input dtype must be float32 or float64, got int32"):
        ReLU().forward(np.zeros((2, 3), np.int32))
    relu = ReLU()
    relu.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ReLU.backward: dy must have shape \(2, 3\)"):
        relu.backward(np.zeros((3, 2)))


# ---------------------------------------------------------------------------------------------------
# MaxPool2d
# ---------------------------------------------------------------------------------------------------
# (kernel, stride, padding, ceil_mode, H, W): VGG's 2x2/s2, SSD300's pool3 (ceil_mode on an odd size),
# pool5 3x3/s1/p1, overlapping 3x3/s2/p1, and odd sizes with ceil_mode
POOLS = [
    (2, None, 0, False, 8, 6),
    (2, 2, 0, False, 9, 7),
    (2, 2, 0, True, 9, 7),
    (3, 1, 1, False, 7, 6),
    (3, 2, 1, True, 9, 8),
    (3, 3, 0, True, 10, 11),
    ((2, 3), (1, 2), (1, 1), False, 6, 9),
]


def _pool_id(p):
    return "k{}s{}p{}c{}-{}x{}".format(*p).replace(" ", "")


def test_pool_output_size_matches_ssd300():
    assert pool_output_size(75, 2, 2, 0, ceil_mode=True) == 38      # pool3: 75 -> 38 (floor gives 37)
    assert pool_output_size(75, 2, 2, 0, ceil_mode=False) == 37
    assert pool_output_size(19, 3, 1, 1, ceil_mode=False) == 19     # pool5 keeps 19x19
    assert pool_output_size(300, 2, 2, 0, ceil_mode=False) == 150
    # ceil_mode never starts a window in the right padding: (5 + 2 - 2)/2 ceil -> 3, +1 = 4, dropped to 3
    assert pool_output_size(5, 2, 2, 1, ceil_mode=True) == 3


def test_maxpool_by_hand():
    x = np.array([[[[1.0, 5.0, 2.0],
                    [3.0, 4.0, 9.0],
                    [7.0, 0.0, 8.0]]]])
    pool = MaxPool2d(2, 2, ceil_mode=True)                          # 3x3 -> 2x2, edge windows clipped
    y = pool.forward(x)
    np.testing.assert_array_equal(y, [[[[5.0, 9.0], [7.0, 8.0]]]])
    dx = pool.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    np.testing.assert_array_equal(dx, [[[[0, 1, 0], [0, 0, 2], [3, 0, 4]]]])


@pytest.mark.parametrize("cfg", POOLS, ids=_pool_id)
def test_maxpool_kernel_matches_reference(cfg, rng):
    k, s, p, ceil, H, W = cfg
    pool = MaxPool2d(k, s, p, ceil)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 3, H, W)).astype(dtype)
        y = pool.forward(x)
        y_ref, arg_ref = maxpool_forward_ref(x, pool.kernel_size, pool.stride, pool.padding, ceil)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(pool._argmax, arg_ref)
        dy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_allclose(pool.backward(dy), maxpool_backward_ref(dy, arg_ref, x.shape), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), ceil=st.booleans(), H=st.integers(1, 11),
       W=st.integers(1, 11), ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_maxpool_kernel_matches_reference_property(kh, kw, sh, sw, ph, pw, ceil, H, W, ties, seed):
    if 2 * ph > kh or 2 * pw > kw:
        with pytest.raises(ValueError, match="at most half"):
            MaxPool2d((kh, kw), (sh, sw), (ph, pw), ceil)
        return
    pool = MaxPool2d((kh, kw), (sh, sw), (ph, pw), ceil)
    g = np.random.default_rng(seed)
    x = g.standard_normal((2, 2, H, W))
    if ties:
        x = np.round(x)                 # many equal values: the first maximum must win in both
    _, _, OH, OW = pool.output_shape(x.shape)
    if OH < 1 or OW < 1:
        with pytest.raises(ValueError, match="smaller than the kernel"):
            pool.forward(x)
        return
    y = pool.forward(x)
    y_ref, arg_ref = maxpool_forward_ref(x, (kh, kw), (sh, sw), (ph, pw), ceil)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(pool._argmax, arg_ref)
    dy = g.standard_normal(y.shape)
    np.testing.assert_allclose(pool.backward(dy), maxpool_backward_ref(dy, arg_ref, x.shape),
                               rtol=1e-13, atol=1e-13)


def test_maxpool_reference_by_hand():
    # 3x3 -> 2x2 with 2x2/s2 ceil_mode: the right and bottom windows are clipped to the image
    x = np.array([[[[1.0, 5.0, 2.0],
                    [3.0, 4.0, 9.0],
                    [7.0, 7.0, 8.0]]]])
    y, argmax = maxpool_forward_ref(x, 2, 2, 0, ceil_mode=True)
    np.testing.assert_array_equal(y, [[[[5.0, 9.0], [7.0, 8.0]]]])
    np.testing.assert_array_equal(argmax, [[[[1, 5], [6, 8]]]])          # tie 7, 7: the first wins
    # 3x3/s1/p1 (pool5): overlapping windows; pixel 9 wins 4 of them and receives their sum
    y, argmax = maxpool_forward_ref(x, 3, 1, 1)
    np.testing.assert_array_equal(y, [[[[5, 9, 9], [7, 9, 9], [7, 9, 9]]]])
    dx = maxpool_backward_ref(np.ones((1, 1, 3, 3)), argmax, x.shape)
    np.testing.assert_array_equal(dx, [[[[0, 1, 0], [0, 0, 6], [2, 0, 0]]]])


@pytest.mark.parametrize("cfg", POOLS, ids=_pool_id)
def test_maxpool_clear_cache_drops_the_argmax(cfg, rng):
    k, s, p, ceil, H, W = cfg
    pool = MaxPool2d(k, s, p, ceil)
    pool.forward(rng.standard_normal((1, 2, H, W)))
    assert pool._argmax is not None
    pool.clear_cache()
    assert pool._argmax is None
    with pytest.raises(RuntimeError, match="before forward"):
        pool.backward(np.zeros(pool.output_shape((1, 2, H, W))))


@pytest.mark.parametrize("cfg", POOLS, ids=_pool_id)
def test_maxpool_gradients(cfg, rng):
    k, s, p, ceil, H, W = cfg
    # distinct values a grid step apart: no two entries of a window within the finite-difference step
    x = rng.permutation(2 * 2 * H * W).reshape(2, 2, H, W) * 0.01
    check_layer_gradients(MaxPool2d(k, s, p, ceil), x.astype(np.float64), rng)


@pytest.mark.parametrize("cfg", POOLS, ids=_pool_id)
def test_maxpool_on_device(cfg, xp, rng):
    k, s, p, ceil, H, W = cfg
    x = rng.standard_normal((2, 3, H, W))
    dy_shape = MaxPool2d(k, s, p, ceil).output_shape(x.shape)
    dy = rng.standard_normal(dy_shape)
    dev = MaxPool2d(k, s, p, ceil)
    # against the window-by-window NumPy reference (not the layer's own CPU path)
    y_ref, argmax = maxpool_forward_ref(x, k, s, p, ceil)
    np.testing.assert_array_equal(to_cpu(dev.forward(xp.asarray(x))), y_ref)
    np.testing.assert_allclose(to_cpu(dev.backward(xp.asarray(dy))), maxpool_backward_ref(dy, argmax, x.shape),
                               rtol=1e-13, atol=1e-13)


@requires_torch
@pytest.mark.parametrize("cfg", POOLS + [(2, 2, 0, True, 75, 75)], ids=_pool_id)
def test_maxpool_matches_torch(cfg, rng):
    import torch
    import torch.nn.functional as F

    k, s, p, ceil, H, W = cfg
    pool = MaxPool2d(k, s, p, ceil)
    for ties in (False, True):
        x = rng.standard_normal((2, 4, H, W)).astype(np.float32)
        if ties:
            x = np.round(x)
        y = pool.forward(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = pool.backward(dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = F.max_pool2d(xt, pool.kernel_size, pool.stride, pool.padding, ceil_mode=ceil)
        yt.backward(torch.tensor(dy))
        np.testing.assert_array_equal(y, yt.detach().numpy())
        assert _scaled_err(dx, xt.grad.numpy()) <= 1e-6


def test_maxpool_rejects_bad_input():
    pool = MaxPool2d(2)
    with pytest.raises(ValueError, match=r"MaxPool2d: input must be 4-D .* got shape \(3, 4\)"):
        pool.forward(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d: input dtype must be float32 or float64, got uint8"):
        pool.forward(np.zeros((1, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"smaller than the kernel"):
        MaxPool2d(3).forward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="padding .* at most half"):
        MaxPool2d(2, padding=2)
    pool.forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 1, 2, 2\)"):
        pool.backward(np.zeros((1, 1, 4, 4)))


# ---------------------------------------------------------------------------------------------------
# L2Norm
# ---------------------------------------------------------------------------------------------------
def test_l2norm_by_hand():
    # one pixel with channels (3, 4): norm 5, so y = 20 * (3/5, 4/5) = (12, 16), up to eps = 1e-10
    # inside the root: 20 * 3 / sqrt(25 + 1e-10) = 12 * (1 - 2e-12)
    layer = L2Norm(2).astype(np.float64)
    y = layer.forward(np.array([3.0, 4.0]).reshape(1, 2, 1, 1))
    np.testing.assert_allclose(y.ravel(), [12.0, 16.0], rtol=1e-11)
    np.testing.assert_allclose(y.ravel(), [12.0 - 24e-12, 16.0 - 32e-12], rtol=1e-14)
    assert layer.params["weight"].shape == (2,)


def test_l2norm_gradients(rng):
    layer = L2Norm(5, scale=3.0).astype(np.float64)
    layer.params["weight"][...] = rng.uniform(0.5, 2.0, 5)
    errors = check_layer_gradients(layer, rng.standard_normal((2, 5, 3, 4)), rng)
    assert set(errors) == {"x", "weight"}


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 1, 1, 1), (3, 16, 1, 7)])
def test_l2norm_matches_reference(shape, rng):
    layer = L2Norm(shape[1]).astype(np.float64)
    layer.params["weight"][...] = rng.uniform(0.5, 20.0, shape[1])
    x = rng.standard_normal(shape)
    x[0, :, 0, 0] = 0.0                          # an all-zero pixel: eps keeps the norm finite
    dy = rng.standard_normal(shape)
    w = layer.params["weight"]
    np.testing.assert_allclose(layer.forward(x), l2norm_forward_ref(x, w, layer.eps), rtol=1e-13, atol=1e-13)
    dx = layer.backward(dy)
    dx_ref, dw_ref = l2norm_backward_ref(x, w, dy, layer.eps)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.grads["weight"], dw_ref, rtol=1e-12, atol=1e-12)


def test_l2norm_reference_gradient_by_finite_differences(rng):
    """The hand-written reference gradient itself, against central differences."""
    x, w, dy = rng.standard_normal((2, 3, 2, 2)), rng.uniform(0.5, 2.0, 3), rng.standard_normal((2, 3, 2, 2))
    dx, dw = l2norm_backward_ref(x, w, dy)
    h = 1e-6
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        e = e.reshape(x.shape)
        num = np.sum(dy * (l2norm_forward_ref(x + e, w) - l2norm_forward_ref(x - e, w))) / (2 * h)
        assert abs(num - dx.reshape(-1)[i]) < 1e-7
    for c in range(3):
        e = np.zeros(3)
        e[c] = h
        num = np.sum(dy * (l2norm_forward_ref(x, w + e) - l2norm_forward_ref(x, w - e))) / (2 * h)
        assert abs(num - dw[c]) < 1e-7


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_l2norm_backward_accumulates_the_scale_gradient(dtype, rng):
    """Two backward passes without zero_grad: the scale's gradient is exactly twice one pass's."""
    layer = L2Norm(4).astype(dtype)
    x = rng.standard_normal((2, 4, 3, 3)).astype(dtype)
    dy = rng.standard_normal((2, 4, 3, 3)).astype(dtype)
    dy_copy = dy.copy()
    layer.forward(x)
    layer.backward(dy)
    first = layer.grads["weight"].copy()
    assert np.abs(first).min() > 0
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.grads["weight"], 2 * first)
    np.testing.assert_array_equal(dy, dy_copy)
    layer.forward(x)
    layer.clear_cache()
    assert layer._xhat is None and layer._norm is None


def test_l2norm_on_device(xp, rng):
    x = rng.standard_normal((2, 4, 3, 3))
    dy = rng.standard_normal(x.shape)
    dev = L2Norm(4).astype(np.float64)
    dev.params["weight"][...] = rng.uniform(5, 25, 4)
    w = dev.params["weight"].copy()
    dev.to("cuda" if xp is not np else "cpu")
    # against the chain-rule NumPy reference (not the layer's own CPU path)
    dx_ref, dw_ref = l2norm_backward_ref(x, w, dy, eps=dev.eps)
    np.testing.assert_allclose(to_cpu(dev.forward(xp.asarray(x))), l2norm_forward_ref(x, w, eps=dev.eps),
                               rtol=1e-12)
    np.testing.assert_allclose(to_cpu(dev.backward(xp.asarray(dy))), dx_ref, rtol=1e-12)
    np.testing.assert_allclose(to_cpu(dev.grads["weight"]), dw_ref, rtol=1e-12)


@requires_torch
def test_l2norm_matches_torch(rng):
    """Against ParseNet/SSD's Normalize layer written in torch (eps inside the square root, as Caffe)."""
    import torch

    layer = L2Norm(16, scale=20.0, eps=1e-10)
    layer.params["weight"][...] = rng.uniform(10, 30, 16).astype(np.float32)
    x = rng.standard_normal((2, 16, 6, 5)).astype(np.float32)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["weight"], requires_grad=True)
    yt = xt / torch.sqrt(xt.pow(2).sum(dim=1, keepdim=True) + 1e-10) * wt.view(1, -1, 1, 1)
    yt.backward(torch.tensor(dy))
    for name, ours, theirs in [("y", y, yt), ("dx", dx, xt.grad), ("dweight", layer.grads["weight"], wt.grad)]:
        assert _scaled_err(ours, theirs.detach().numpy()) <= 1e-5, name


def test_l2norm_rejects_bad_input():
    layer = L2Norm(4)
    with pytest.raises(ValueError, match=r"L2Norm: expected 4 input channels .* shape \(1, 3, 2, 2\)"):
        layer.forward(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"L2Norm: input must be 4-D"):
        layer.forward(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"L2Norm: input dtype float64 .* parameter dtype float32"):
        layer.forward(np.zeros((1, 4, 2, 2), np.float64))
    with pytest.raises(ValueError, match="channels must be a positive int"):
        L2Norm(0)


# ---------------------------------------------------------------------------------------------------
# the layers together
# ---------------------------------------------------------------------------------------------------
def test_small_network_directional_check(rng):
    """conv-relu-pool-conv-L2Norm with SSD's odd corners (ceil_mode, dilation, stride 2) end to end."""
    net = Sequential([
        ("conv1", Conv2d(3, 8, 3, padding=1, rng=rng)),
        ("relu1", ReLU()),
        ("pool1", MaxPool2d(2, 2, ceil_mode=True)),
        ("conv2", Conv2d(8, 8, 3, padding=2, dilation=2, rng=rng)),
        ("relu2", ReLU(inplace=True)),
        ("norm", L2Norm(8)),
        ("conv3", Conv2d(8, 4, 3, stride=2, padding=1, rng=rng)),
    ]).astype(np.float64)
    x = rng.standard_normal((2, 3, 15, 13))
    r = rng.standard_normal(net.forward(x).shape)
    params = [p for _, p, _ in net.named_parameters()]

    def loss_and_grads():
        y = net.forward(x)
        net.zero_grad()
        dx = net.backward(r)
        return float(np.sum(y * r)), [dx] + [g for _, _, g in net.named_parameters()]

    directional_check(loss_and_grads, [x] + params, rng)


def test_thread_count_does_not_change_results(rng):
    """The CPU layers split work into per-thread ranges; 1 thread and 3 threads agree."""
    x = rng.standard_normal((3, 4, 21, 20))
    conv, pool, relu = Conv2d(4, 5, 3, padding=1, rng=rng).astype(np.float64), MaxPool2d(2), ReLU()
    dy = rng.standard_normal((3, 5, 10, 10))

    def run():
        conv.zero_grad()
        y = pool.forward(relu.forward(conv.forward(x)))
        dx = conv.backward(relu.backward(pool.backward(dy)))
        return [y, dx, conv.grads["W"].copy(), conv.grads["b"].copy()]

    old = threads_mod.get_num_threads()
    try:
        threads_mod.set_num_threads(1)
        assert threads_mod.get_num_threads() == 1
        one = run()
        threads_mod.set_num_threads(3)
        many = run()
    finally:
        threads_mod.set_num_threads(old)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        threads_mod.set_num_threads(-1)


def test_parallel_for_covers_the_range_once():
    hits = np.zeros(1000, dtype=int)

    def job(a, b):
        hits[a:b] += 1

    old = threads_mod.get_num_threads()
    try:
        threads_mod.set_num_threads(4)
        threads_mod.parallel_for(1000, job, grain=10)
        assert threads_mod.parallel_sum(1000, lambda a, b: b - a) == 1000
        with pytest.raises(ZeroDivisionError):
            threads_mod.parallel_for(1000, lambda a, b: 1 / 0)
    finally:
        threads_mod.set_num_threads(old)
    assert (hits == 1).all()


def test_threads_fall_back_to_one_without_a_reachable_openblas(monkeypatch):
    """With a BLAS we cannot pin to one thread, the layers must not add threads on top of its own."""
    old = threads_mod.get_num_threads()
    monkeypatch.setitem(threads_mod._THREADS, "blas_pinned", False)
    try:
        threads_mod.set_num_threads(4)
        assert threads_mod.get_num_threads() == 1
    finally:
        monkeypatch.setitem(threads_mod._THREADS, "blas_pinned", True)
        threads_mod.set_num_threads(old)


def test_default_threads_read_the_environment(monkeypatch):
    monkeypatch.setenv("MINISSD_NUM_THREADS", "3")
    assert threads_mod._default_threads() == 3
    monkeypatch.setenv("MINISSD_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="MINISSD_NUM_THREADS='many' is not an integer"):
        threads_mod._default_threads()


def test_a_forked_child_gets_a_working_thread_pool(in_forked_child):
    """A process forked after the pool exists (multiprocessing's fork start method, mutmut's children)
    inherits the executor without its threads; it must start its own instead of waiting forever."""
    old = threads_mod.get_num_threads()
    threads_mod.set_num_threads(2)
    try:
        out = np.zeros(8)

        def job(a, b):
            out[a:b] += 1

        threads_mod.parallel_for(8, job)          # the pool exists now
        def child():                              # the same call must finish in the child
            threads_mod.parallel_for(8, job)
            return bool(np.all(out == 2))

        in_forked_child(child, "the inherited thread pool")
    finally:
        threads_mod.set_num_threads(old)

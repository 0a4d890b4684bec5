"""Behaviours of the layers (minissd/nn: conv, im2col, pool, relu, l2norm) that the mutation run of
issue 16 found unpinned by tests/test_conv.py, test_layers.py and test_module.py (tests/mutation/nn.md)."""
import numpy as np
import pytest

from minissd.nn import (
    Conv2d,
    L2Norm,
    MaxPool2d,
    ReLU,
    col2im_ref,
    conv_backward_ref,
    conv_forward_ref,
    im2col_ref,
    maxpool_backward_ref,
    maxpool_forward_ref,
    relu_backward_ref,
)
from minissd.nn import conv as conv_mod
from minissd.nn.conv import conv_group_backward, conv_group_forward
from minissd.nn.pool import pool_output_size


# ---------------------------------------------------------------------------------------------------
# MaxPool2d's reference twins
# ---------------------------------------------------------------------------------------------------
def test_maxpool_reference_defaults_are_no_padding_floor_and_stride_equal_to_the_kernel():
    """maxpool_forward_ref(x, 2) on 5x5: 2x2/s2, no padding, floor mode -> 2x2 (the last row/column dropped)."""
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y, argmax = maxpool_forward_ref(x, 2)
    np.testing.assert_array_equal(y, [[[[6.0, 8.0], [16.0, 18.0]]]])
    np.testing.assert_array_equal(argmax, [[[[6, 8], [16, 18]]]])


@pytest.mark.parametrize("kwargs, name", [
    (dict(kernel_size=0), "kernel_size must be >= 1"),
    (dict(kernel_size=2, stride=0), "stride must be >= 1"),
    (dict(kernel_size=2, padding=-1), "padding must be >= 0"),
])
def test_maxpool_reference_names_its_bad_argument(kwargs, name):
    """The reference's argument checks say which argument is wrong."""
    with pytest.raises(ValueError, match=name):
        maxpool_forward_ref(np.zeros((1, 1, 4, 4)), **kwargs)


def test_maxpool_references_keep_float32():
    """The reference forward and backward return the input's dtype (float32 stays float32)."""
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    y, argmax = maxpool_forward_ref(x, 2)
    assert y.dtype == np.float32
    dx = maxpool_backward_ref(np.ones_like(y), argmax, x.shape)
    assert dx.dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# MaxPool2d
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=0), "MaxPool2d kernel_size must be >= 1"),
    (dict(kernel_size=2, stride=0), "MaxPool2d stride must be >= 1"),
    (dict(kernel_size=2, padding=-1), "MaxPool2d padding must be >= 0"),
])
def test_maxpool_names_its_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match="^" + message):
        MaxPool2d(**kwargs)


def test_maxpool_with_a_1x1_kernel_is_the_identity():
    """kernel 1 is allowed: every window is one pixel, y == x, dy goes straight back."""
    x = np.random.default_rng(6).standard_normal((1, 2, 3, 4))
    pool = MaxPool2d(1)
    np.testing.assert_array_equal(pool.forward(x), x)
    np.testing.assert_array_equal(pool.backward(2 * x), 2 * x)


def test_maxpool_pads_height_and_width_separately():
    """padding (1, 0) with a 3x2 kernel, stride 1: output 5x4 from 5x5, the reference's numbers."""
    x = np.random.default_rng(7).standard_normal((1, 2, 5, 5))
    for kernel, padding in [((3, 2), (1, 0)), ((2, 3), (0, 1))]:
        pool = MaxPool2d(kernel, 1, padding)
        y = pool.forward(x)
        y_ref, _ = maxpool_forward_ref(x, kernel, 1, padding)
        assert y.shape == pool.output_shape(x.shape) == y_ref.shape
        np.testing.assert_array_equal(y, y_ref)


def test_ceil_mode_keeps_a_last_window_that_starts_in_the_image():
    """5 pixels, 3x3/s2/p1, ceil_mode: the third window starts at pixel 3 (inside the image) and is kept,
    as in PyTorch; only a window starting in the right padding is dropped."""
    assert pool_output_size(5, 3, 2, 1, ceil_mode=True) == 3
    assert pool_output_size(4, 2, 2, 1, ceil_mode=True) == 3
    assert MaxPool2d(3, 2, 1, ceil_mode=True).output_shape((1, 1, 5, 5)) == (1, 1, 3, 3)


def test_maxpool_output_of_one_pixel_is_allowed_and_a_window_too_tall_or_wide_is_not():
    """A 1x1 output is fine; a kernel taller (or wider) than the input is refused even if the other side fits."""
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(MaxPool2d(2).forward(x), [[[[3.0]]]])
    for kernel in [(3, 1), (1, 3)]:
        with pytest.raises(ValueError, match="smaller than the kernel"):
            MaxPool2d(kernel).forward(x)


@pytest.mark.parametrize("dy_dtype", [np.float16, np.int64])
def test_maxpool_backward_takes_any_numeric_dy_as_float32(dy_dtype):
    """dy of another dtype (float16, int) is routed as float32; float32 and float64 dy keep their dtype."""
    x = np.random.default_rng(8).standard_normal((1, 2, 4, 4)).astype(np.float32)
    pool = MaxPool2d(2)
    y = pool.forward(x)
    _, argmax = maxpool_forward_ref(x, 2)
    dy = np.arange(y.size).reshape(y.shape).astype(dy_dtype)
    dx = pool.backward(dy)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, maxpool_backward_ref(dy.astype(np.float32), argmax, x.shape))
    pool.forward(x)
    assert pool.backward(dy.astype(np.float64)).dtype == np.float64


# ---------------------------------------------------------------------------------------------------
# The convolution's reference twins
# ---------------------------------------------------------------------------------------------------
def test_im2col_reference_defaults_to_no_padding():
    """im2col_ref(x, 3) / col2im_ref(col, shape, 3) on 5x5: stride 1, padding 0, dilation 1 -> 3x3 outputs."""
    x = np.arange(50.0).reshape(1, 2, 5, 5)
    col = im2col_ref(x, 3)
    assert col.shape == (1, 18, 9)
    np.testing.assert_array_equal(col[0, :, 0], x[0, :, :3, :3].ravel())
    back = col2im_ref(np.ones_like(col), x.shape, 3)
    np.testing.assert_array_equal(back[0, 0], [[1, 2, 3, 2, 1], [2, 4, 6, 4, 2], [3, 6, 9, 6, 3],
                                               [2, 4, 6, 4, 2], [1, 2, 3, 2, 1]])


def test_conv_references_keep_float32():
    """The plain twins return the input's dtype: float32 in, float32 columns, outputs and gradients out."""
    g = np.random.default_rng(3)
    x = g.standard_normal((2, 2, 5, 5)).astype(np.float32)
    W = g.standard_normal((3, 2, 3, 3)).astype(np.float32)
    assert im2col_ref(x, 3, padding=1).dtype == np.float32
    assert col2im_ref(im2col_ref(x, 3), x.shape, 3).dtype == np.float32
    y = conv_forward_ref(x, W, None, padding=1)
    assert y.dtype == np.float32
    dx, dW, db = conv_backward_ref(x, W, np.ones_like(y), padding=1)
    assert dx.dtype == dW.dtype == db.dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# Conv2d's buffers
# ---------------------------------------------------------------------------------------------------
def test_conv2d_reuses_its_column_buffer_across_steps_and_remakes_it_for_a_new_batch_size():
    """Training steps of one shape share one column buffer; another batch size gets a buffer of its own."""
    g = np.random.default_rng(9)
    conv = Conv2d(2, 3, 3, padding=1, rng=g).astype(np.float64)
    x2, x3 = g.standard_normal((2, 2, 5, 5)), g.standard_normal((3, 2, 5, 5))
    conv.forward(x2)
    first = conv._col
    conv.forward(x2)
    assert conv._col is first
    y3 = conv.forward(x3)
    assert conv._col.shape == (18, 3, 25)
    np.testing.assert_allclose(y3, conv_forward_ref(x3, conv.params["W"], conv.params["b"], 1, 1),
                               rtol=1e-12, atol=1e-12)


def test_conv2d_chunks_hold_one_image_when_only_one_fits(monkeypatch):
    """A chunk is at least one image, and no more than fit in CHUNK_BYTES."""
    conv = Conv2d(3, 4, 3, padding=1)
    one_image = 27 * 72 * 4
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", one_image)
    assert conv._chunk(5, 27, 72, 4) == 1
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", one_image // 2)
    assert conv._chunk(5, 27, 72, 4) == 1


# ---------------------------------------------------------------------------------------------------
# Fused heads: conv_group_forward / conv_group_backward
# ---------------------------------------------------------------------------------------------------
def test_conv_group_forward_checks_the_input_like_conv2d():
    """The fused forward refuses what Conv2d.forward refuses, with Conv2d's message."""
    layers = [Conv2d(3, 4, 3, padding=1), Conv2d(3, 2, 3, padding=1)]
    with pytest.raises(ValueError, match=r"^Conv2d: expected 3 input channels"):
        conv_group_forward(layers, np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"^Conv2d: input dtype float64 .* parameter dtype float32"):
        conv_group_forward(layers, np.zeros((1, 3, 5, 5), np.float64))


def test_conv_group_of_three_layers_splits_the_output_at_each_layers_channels():
    """Three fused layers (4, 2 and 3 filters): each output is that layer's own convolution."""
    g = np.random.default_rng(4)
    layers = [Conv2d(3, f, 3, padding=1, rng=g).astype(np.float64) for f in (4, 2, 3)]
    for c in layers:
        c.params["b"][...] = g.standard_normal(c.out_channels)
    x = g.standard_normal((2, 3, 5, 6))
    ys = conv_group_forward(layers, x)
    for c, y in zip(layers, ys, strict=True):
        np.testing.assert_allclose(y, conv_forward_ref(x, c.params["W"], c.params["b"], 1, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("input_grads", [(True, False), (False, True), (False, False)])
def test_conv_group_backward_sums_dx_of_the_layers_that_want_it(input_grads):
    """A layer with input_grad=False adds nothing to dx (first or second in the group); none wanting it: None."""
    g = np.random.default_rng(5)
    layers = [Conv2d(2, f, 3, padding=1, rng=g, input_grad=want).astype(np.float64)
              for f, want in zip((3, 4), input_grads, strict=True)]
    x = g.standard_normal((2, 2, 5, 5))
    dys = [g.standard_normal(y.shape) for y in conv_group_forward(layers, x)]
    dx = conv_group_backward(layers, dys)
    if not any(input_grads):
        assert dx is None
        return
    want = sum(conv_backward_ref(x, c.params["W"], dy, 1, 1)[0]
               for c, dy in zip(layers, dys, strict=True) if c.input_grad)
    np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-12)
    for c, dy in zip(layers, dys, strict=True):
        np.testing.assert_allclose(c.grads["W"], conv_backward_ref(x, c.params["W"], dy, 1, 1)[1],
                                   rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Caches: backward without a fresh forward is an error, not a silent reuse
# ---------------------------------------------------------------------------------------------------
def _layers_and_inputs():
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4))
    return [(ReLU(), x), (ReLU(inplace=True), x.copy()), (MaxPool2d(2), x),
            (L2Norm(3, dtype=np.float64), x), (Conv2d(3, 2, 3, padding=1, dtype=np.float64), x)]


@pytest.mark.parametrize("i", range(5))
def test_backward_needs_a_fresh_forward(i):
    """Backward before forward, a second backward, and backward after clear_cache raise RuntimeError."""
    layer, x = _layers_and_inputs()[i]
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones_like(x))
    y = layer.forward(x.copy())
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones_like(y))
    layer.forward(x.copy())
    layer.clear_cache()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones_like(y))


# ---------------------------------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True])
def test_relu_backward_casts_dy_to_the_layers_dtype(inplace):
    """A float32 ReLU given a float64 (or non-contiguous) dy returns float32 dL/dx, the reference's values."""
    g = np.random.default_rng(2)
    x = g.standard_normal((2, 3, 4, 5)).astype(np.float32)
    dy = g.standard_normal((2, 3, 5, 4)).transpose(0, 1, 3, 2)          # float64, not contiguous
    relu = ReLU(inplace=inplace)
    relu.forward(x.copy())
    dx = relu.backward(dy)
    assert dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_array_equal(dx, relu_backward_ref(x, dy.astype(np.float32)))


# ---------------------------------------------------------------------------------------------------
# L2Norm
# ---------------------------------------------------------------------------------------------------
def test_l2norm_bad_channels_names_the_layer():
    with pytest.raises(ValueError, match="L2Norm: channels must be a positive int"):
        L2Norm(0)


# ---------------------------------------------------------------------------------------------------
# repr: what each layer prints in a model summary
# ---------------------------------------------------------------------------------------------------
def test_layer_reprs_show_their_options():
    """Options at their defaults stay out of the repr; others (dilation, bias=False, ceil_mode, inplace) show."""
    assert repr(ReLU()) == "ReLU()"
    assert repr(ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert repr(MaxPool2d(3, 1, 1, ceil_mode=True)) == \
        "MaxPool2d(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), ceil_mode=True)"
    assert repr(Conv2d(3, 4, 3)) == "Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(0, 0))"
    for dilation in [(2, 1), (1, 2)]:
        assert repr(Conv2d(3, 4, 3, dilation=dilation, bias=False)) == (
            f"Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(0, 0), dilation={dilation}, bias=False)")
    assert repr(L2Norm(4)) == "L2Norm(4, eps=1e-10)"

"""Conv2d and im2col/col2im: kernels == NumPy twins, col2im is im2col's adjoint, gradients, PyTorch."""
import numpy as np
import pytest

from conftest import gemm_set_to, given, own_gemm_supported, requires_torch, settings, st, threads_set_to
from minissd.backend import to_cpu
from minissd.nn import (
    Conv2d,
    Sequential,
    Workspace,
    col2im,
    col2im_ref,
    conv_backward_ref,
    conv_forward_ref,
    conv_output_size,
    im2col,
    im2col_ref,
    set_num_threads,
)
from minissd.nn import conv as conv_mod
from minissd.nn.conv import conv_group_backward, conv_group_forward
from minissd.nn.init import fan_in, he_normal, init_weight, xavier_uniform
from minissd.nn.threads import cpu_kernels
from minissd.testing import check_layer_gradients, directional_check

# (N, C, H, W, kernel, stride, padding, dilation): SSD's cases (3x3/s1/p1, 3x3/s2/p1 extras, 3x3/s1/p0
# extras, fc6's dilation 6 with padding 6, 1x1) plus odd and non-square sizes
GEOMETRIES = [
    (2, 3, 7, 9, 3, 1, 1, 1),
    (2, 4, 11, 10, 3, 2, 0, 1),
    (2, 3, 9, 9, 3, 2, 1, 1),
    (1, 2, 14, 13, 3, 1, 6, 6),
    (2, 3, 5, 5, 3, 1, 0, 1),
    (2, 5, 6, 7, 1, 1, 0, 1),
    (2, 3, 9, 8, (2, 3), (3, 1), (1, 0), (2, 1)),
]


def _geom_id(g):
    return "N{}C{}H{}W{}-k{}s{}p{}d{}".format(*g).replace(" ", "")


# ---------------------------------------------------------------------------------------------------
# im2col / col2im kernels
# ---------------------------------------------------------------------------------------------------
def test_im2col_ref_by_hand():
    # x = [[1, 2], [3, 4]], 2x2 kernel, padding 1 -> 3x3 outputs; column (oh, ow) holds the window
    # x_pad[oh:oh+2, ow:ow+2] flattened; output (0, 0) sees only x[0, 0] = 1 in its bottom-right tap.
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    col = im2col_ref(x, 2, padding=1)
    assert col.shape == (1, 4, 9)
    np.testing.assert_array_equal(col[0, :, 0], [0, 0, 0, 1])        # window at (-1, -1)
    np.testing.assert_array_equal(col[0, :, 4], [1, 2, 3, 4])        # window at (0, 0)
    np.testing.assert_array_equal(col[0, :, 8], [4, 0, 0, 0])        # window at (1, 1)
    # every pixel is read by 4 windows, so col2im of all-ones counts 4 everywhere
    np.testing.assert_array_equal(col2im_ref(np.ones_like(col), x.shape, 2, padding=1), 4 * np.ones_like(x))


@pytest.mark.parametrize("geom", GEOMETRIES, ids=_geom_id)
@pytest.mark.parametrize("rows_first", [False, True])
def test_cython_kernels_match_reference(geom, rows_first, rng):
    N, C, H, W, k, s, p, d = geom
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        ref = im2col_ref(x, k, s, p, d)
        col = im2col(x, k, s, p, d, rows_first=rows_first)
        np.testing.assert_array_equal(col, ref.transpose(1, 0, 2) if rows_first else ref)
        r = rng.standard_normal(col.shape).astype(dtype)
        r_ref = r.transpose(1, 0, 2) if rows_first else r
        np.testing.assert_allclose(col2im(r, x.shape, k, s, p, d, rows_first=rows_first),
                                   col2im_ref(r_ref, x.shape, k, s, p, d), rtol=1e-6 if dtype == np.float32 else 1e-13)


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 4), H=st.integers(1, 12), W=st.integers(1, 12),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 3), pw=st.integers(0, 3), dh=st.integers(1, 3), dw=st.integers(1, 3),
       rows_first=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_kernels_match_reference_and_are_adjoint_property(N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw,
                                                          rows_first, seed):
    args = ((kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if conv_output_size(H, kh, sh, ph, dh) < 1 or conv_output_size(W, kw, sw, pw, dw) < 1:
        with pytest.raises(ValueError, match="too small"):
            im2col(np.zeros((N, C, H, W)), *args)
        return
    g = np.random.default_rng(seed)
    x = g.standard_normal((N, C, H, W))
    col = im2col(x, *args, rows_first=rows_first)
    ref = im2col_ref(x, *args)
    np.testing.assert_array_equal(col, ref.transpose(1, 0, 2) if rows_first else ref)
    r = g.standard_normal(col.shape)
    back = col2im(r, x.shape, *args, rows_first=rows_first)
    np.testing.assert_allclose(back, col2im_ref(r.transpose(1, 0, 2) if rows_first else r, x.shape, *args),
                               rtol=1e-13, atol=1e-13)
    # adjoint: <im2col(x), r> == <x, col2im(r)>
    lhs, rhs = float(np.sum(col * r)), float(np.sum(x * back))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("geom", GEOMETRIES, ids=_geom_id)
def test_col2im_is_the_adjoint_of_im2col(geom, xp, rng):
    """<im2col(x), r> == <x, col2im(r)> to 1e-12 in float64, for the reference and the fast kernels."""
    N, C, H, W, k, s, p, d = geom
    x = xp.asarray(rng.standard_normal((N, C, H, W)))
    col = im2col(x, k, s, p, d)
    r = xp.asarray(rng.standard_normal(col.shape))
    for lhs, rhs in [
        (float(xp.sum(col * r)), float(xp.sum(x * col2im(r, x.shape, k, s, p, d)))),
        (float(np.sum(im2col_ref(to_cpu(x), k, s, p, d) * to_cpu(r))),
         float(np.sum(to_cpu(x) * col2im_ref(to_cpu(r), x.shape, k, s, p, d)))),
    ]:
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), (lhs, rhs)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=_geom_id)
@pytest.mark.parametrize("rows_first", [False, True])
def test_device_kernels_match_reference(geom, rows_first, xp, rng):
    """Cython on numpy, the CuPy kernels on cupy (runs on a GPU machine), against the NumPy twins."""
    N, C, H, W, k, s, p, d = geom
    x = rng.standard_normal((N, C, H, W))
    ref = im2col_ref(x, k, s, p, d)
    col = im2col(xp.asarray(x), k, s, p, d, rows_first=rows_first)
    np.testing.assert_array_equal(to_cpu(col), ref.transpose(1, 0, 2) if rows_first else ref)
    r = rng.standard_normal(col.shape)
    back = col2im(xp.asarray(r), x.shape, k, s, p, d, rows_first=rows_first)
    np.testing.assert_allclose(to_cpu(back), col2im_ref(r.transpose(1, 0, 2) if rows_first else r,
                                                        x.shape, k, s, p, d), rtol=1e-13, atol=1e-13)


def test_kernels_reject_bad_arguments():
    x = np.zeros((1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        im2col(np.zeros((2, 5, 5)), 3)
    with pytest.raises(ValueError, match="float32 or float64"):
        im2col(np.zeros((1, 2, 5, 5), dtype=np.int64), 3)
    with pytest.raises(ValueError, match="too small"):
        im2col(x, 7)
    with pytest.raises(ValueError, match="out must be"):
        im2col(x, 3, out=np.empty((1, 18, 8)))
    with pytest.raises(ValueError, match="col must have shape"):
        col2im(np.zeros((1, 18, 8)), x.shape, 3)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        im2col(x, 3, stride=0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        im2col(x, 3, padding=-1)


def test_empty_batch():
    x = np.zeros((0, 2, 5, 5), dtype=np.float32)
    assert im2col(x, 3).shape == (0, 18, 9)
    conv = Conv2d(2, 3, 3, rng=np.random.default_rng(0))
    y = conv.forward(x)
    assert y.shape == (0, 3, 3, 3)
    assert conv.backward(y).shape == x.shape


# ---------------------------------------------------------------------------------------------------
# Conv2d == the plain reference conv_forward_ref / conv_backward_ref
# ---------------------------------------------------------------------------------------------------
def test_conv_reference_by_hand():
    # 1 image, 1 channel 3x3, one 2x2 filter of ones: each output sums a 2x2 window (+ bias 10)
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    W = np.ones((1, 1, 2, 2))
    y = conv_forward_ref(x, W, np.array([10.0]))
    np.testing.assert_array_equal(y, [[[[18.0, 22.0], [30.0, 34.0]]]])
    # padding 1, stride 2: windows at (-1, -1), (-1, 1), (1, -1), (1, 1)
    np.testing.assert_array_equal(conv_forward_ref(x, W, None, stride=2, padding=1),
                                  [[[[0.0, 3.0], [9.0, 24.0]]]])
    # backward with dy = 1: each input pixel receives one per window covering it; dW sums the windows
    dx, dW, db = conv_backward_ref(x, W, np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx, [[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]])
    np.testing.assert_array_equal(dW, [[[[8.0, 12.0], [20.0, 24.0]]]])
    np.testing.assert_array_equal(db, [4.0])


@pytest.mark.parametrize("geom", GEOMETRIES + [(3, 2, 8, 8, 3, 2, 2, 2), (1, 1, 1, 1, 1, 1, 0, 1)],
                         ids=_geom_id)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_reference(geom, bias, rng):
    N, C, H, W, k, s, p, d = geom
    conv = Conv2d(C, 4, k, stride=s, padding=p, dilation=d, bias=bias, rng=rng).astype(np.float64)
    b = None
    if bias:
        b = conv.params["b"]
        b[...] = rng.standard_normal(4)
    x = rng.standard_normal((N, C, H, W))
    y = conv.forward(x)
    y_ref = conv_forward_ref(x, conv.params["W"], b, s, p, d)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    dx_ref, dW_ref, db_ref = conv_backward_ref(x, conv.params["W"], dy, s, p, d)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], dW_ref, rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(conv.grads["b"], db_ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 3), F=st.integers(1, 3), H=st.integers(1, 9), W=st.integers(1, 9),
       kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), dh=st.integers(1, 3), dw=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_conv2d_matches_reference_property(N, C, F, H, W, kh, kw, sh, sw, ph, pw, dh, dw, seed):
    if conv_output_size(H, kh, sh, ph, dh) < 1 or conv_output_size(W, kw, sw, pw, dw) < 1:
        return
    g = np.random.default_rng(seed)
    conv = Conv2d(C, F, (kh, kw), (sh, sw), (ph, pw), (dh, dw), rng=g).astype(np.float64)
    conv.params["b"][...] = g.standard_normal(F)
    x = g.standard_normal((N, C, H, W))
    y = conv.forward(x)
    args = ((sh, sw), (ph, pw), (dh, dw))
    np.testing.assert_allclose(y, conv_forward_ref(x, conv.params["W"], conv.params["b"], *args),
                               rtol=1e-12, atol=1e-12)
    dy = g.standard_normal(y.shape)
    dx = conv.backward(dy)
    for got, want in zip((dx, conv.grads["W"], conv.grads["b"]),
                         conv_backward_ref(x, conv.params["W"], dy, *args), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Fused layers: conv_group_forward / conv_group_backward (SSD's loc + conf heads) == separate references
# ---------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 3), F1=st.integers(1, 4), F2=st.integers(1, 4),
       H=st.integers(1, 9), W=st.integers(1, 9), k=st.integers(1, 3), s=st.integers(1, 3),
       p=st.integers(0, 2), d=st.integers(1, 3), bias=st.booleans(), sum_dx=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_conv_group_matches_separate_references_property(N, C, F1, F2, H, W, k, s, p, d, bias, sum_dx, seed):
    """The fused path (one im2col, stacked GEMMs, one col2im when sum_dx) gives each layer's output and
    gradients of the per-tap reference, and dx_1 + dx_2."""
    if conv_output_size(H, k, s, p, d) < 1 or conv_output_size(W, k, s, p, d) < 1:
        return
    g = np.random.default_rng(seed)
    layers = [Conv2d(C, F, k, s, p, d, bias=bias, rng=g).astype(np.float64) for F in (F1, F2)]
    if bias:
        for c in layers:
            c.params["b"][...] = g.standard_normal(c.out_channels)
    x = g.standard_normal((N, C, H, W))
    ys = conv_group_forward(layers, x)
    dys = [g.standard_normal(y.shape) for y in ys]
    dx = conv_group_backward(layers, dys, sum_dx=sum_dx)
    dx_ref = 0
    for c, y, dy in zip(layers, ys, dys, strict=True):
        b = c.params["b"] if bias else None
        np.testing.assert_allclose(y, conv_forward_ref(x, c.params["W"], b, s, p, d), rtol=1e-12, atol=1e-12)
        dxi, dWi, dbi = conv_backward_ref(x, c.params["W"], dy, s, p, d)
        dx_ref = dx_ref + dxi
        np.testing.assert_allclose(c.grads["W"], dWi, rtol=1e-12, atol=1e-12)
        if bias:
            np.testing.assert_allclose(c.grads["b"], dbi, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


def test_conv_group_chunked_eval_and_float32_like_separate_layers(rng, monkeypatch):
    """Chunked columns (past CACHE_BYTES) and eval mode take the same fused path; float32 agrees with
    two separate layers to rounding; the sum of dx equals the separate dx's sum."""
    x = rng.standard_normal((5, 3, 7, 6)).astype(np.float32)
    mk = lambda: [Conv2d(3, f, 3, padding=1, rng=np.random.default_rng(f)) for f in (4, 6)]  # noqa: E731
    sep, grp = mk(), mk()
    dys = [rng.standard_normal((5, f, 7, 6)).astype(np.float32) for f in (4, 6)]
    ys_sep = [c.forward(x) for c in sep]
    dx_sep = sep[0].backward(dys[0]) + sep[1].backward(dys[1])
    monkeypatch.setattr(conv_mod, "CACHE_BYTES", 0)
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 2 * 27 * 42 * 4)       # chunks of 2, 2, 1 images
    ys = conv_group_forward(grp, x)
    dx = conv_group_backward(grp, dys)
    for a, b in zip(ys, ys_sep, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_sep, rtol=1e-5, atol=1e-5)
    for a, b in zip(grp, sep, strict=True):
        np.testing.assert_allclose(a.grads["W"], b.grads["W"], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(a.grads["b"], b.grads["b"], rtol=1e-5, atol=1e-5)
    for c in grp:
        c.eval()
    ys_eval = conv_group_forward(grp, x)
    for a, b in zip(ys_eval, ys, strict=True):
        np.testing.assert_array_equal(a, b)


def test_conv_group_rejects_mismatched_layers(rng):
    a = Conv2d(3, 4, 3, padding=1, rng=rng)
    x = np.zeros((1, 3, 5, 5), np.float32)
    for other in (Conv2d(3, 4, 3, padding=0, rng=rng), Conv2d(2, 4, 3, padding=1, rng=rng),
                  Conv2d(3, 4, 3, padding=1, bias=False, rng=rng)):
        with pytest.raises(ValueError, match="conv_group_forward: the layers must share"):
            conv_group_forward([a, other], x)
    with pytest.raises(ValueError, match="must be Conv2d"):
        conv_group_forward([a, object()], x)
    b = Conv2d(3, 2, 3, padding=1, rng=rng)
    conv_group_forward([a, b], x)
    with pytest.raises(ValueError, match=r"conv_group_backward: dy must have shape \(1, 2, 5, 5\)"):
        conv_group_backward([a, b], [np.zeros((1, 4, 5, 5), np.float32), np.zeros((1, 4, 5, 5), np.float32)])


@pytest.mark.parametrize("threads", [1, 3])
def test_forward_bias_transpose_matches_reference_for_any_thread_count(threads, rng):
    """The (F, N, P) -> (N, F, P) + bias copy written with out= (split over images by threads)."""
    set_num_threads(threads)
    try:
        conv = Conv2d(3, 5, 3, padding=1, rng=rng).astype(np.float64)
        conv.params["b"][...] = rng.standard_normal(5)
        x = rng.standard_normal((4, 3, 6, 7))
        np.testing.assert_allclose(conv.forward(x), conv_forward_ref(x, conv.params["W"], conv.params["b"], 1, 1),
                                   rtol=1e-12, atol=1e-12)
        nobias = Conv2d(3, 5, 3, padding=1, bias=False, rng=rng).astype(np.float64)
        np.testing.assert_allclose(nobias.forward(x), conv_forward_ref(x, nobias.params["W"], None, 1, 1),
                                   rtol=1e-12, atol=1e-12)
    finally:
        set_num_threads(0)


# ---------------------------------------------------------------------------------------------------
# Buffers: the kept columns and the workspace scratch, released by clear_cache
# ---------------------------------------------------------------------------------------------------
def test_workspace_grows_and_clears():
    ws = Workspace()
    a = ws.get(np, "y", (2, 3), np.float32)
    assert a.shape == (2, 3) and a.dtype == np.float32 and a.flags.c_contiguous
    b = ws.get(np, "y", (1, 4), np.float32)              # smaller: a view of the same buffer
    assert np.shares_memory(a, b) and len(ws) == 1 and ws.nbytes == 24
    ws.get(np, "y", (5, 5), np.float32)                  # larger: a new buffer replaces it
    ws.get(np, "y", (5, 5), np.float64)                  # another dtype: another buffer
    assert len(ws) == 2 and ws.nbytes == 25 * 4 + 25 * 8
    ws.clear()
    assert len(ws) == 0 and ws.nbytes == 0


@pytest.fixture
def blas_gemm():
    """The BLAS GEMM, so that a 3-channel first layer takes im2col (not the AVX-512 direct path)."""
    with gemm_set_to("blas"):
        yield


def test_model_layers_share_one_workspace_and_clear_cache_releases_every_buffer(rng, blas_gemm):
    inner = Sequential([("c2", Conv2d(4, 4, 3, padding=1, rng=rng))])
    net = Sequential([("c1", Conv2d(3, 4, 3, padding=1, rng=rng))])
    net.add_child("inner", inner)                       # a subtree added later joins the root's workspace
    assert net["c1"].workspace is net.workspace and inner["c2"].workspace is net.workspace
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    net.forward(x)
    convs = [net["c1"], inner["c2"]]
    assert all(c._col is not None and c._x is not None for c in convs)
    net.eval()                                          # eval: columns come from the shared workspace
    net.forward(x)
    assert net.workspace.nbytes > 0
    net.train()
    net.clear_cache()
    assert all(c._col is None and c._x is None for c in convs)
    assert net.workspace.nbytes == 0
    y = net.forward(x)                                  # buffers come back; same numbers
    net.clear_cache()
    np.testing.assert_array_equal(net.forward(x), y)


def test_chunked_scratch_lives_in_the_workspace(rng, monkeypatch, blas_gemm):
    conv = Conv2d(2, 3, 3, padding=1, rng=rng)
    monkeypatch.setattr(conv_mod, "CACHE_BYTES", 0)
    conv.forward(rng.standard_normal((3, 2, 5, 5)).astype(np.float32))
    assert conv._col is None                             # nothing kept: backward unrolls again
    assert conv.workspace.nbytes >= 2 * 9 * 3 * 25 * 4   # the column chunk (the CPU GEMMs write y directly)
    conv.clear_cache()
    assert conv.workspace.nbytes == 0


# ---------------------------------------------------------------------------------------------------
# Conv2d: gradient checks (float64 central differences)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geom", GEOMETRIES, ids=_geom_id)
def test_conv2d_gradients(geom, rng):
    N, C, H, W, k, s, p, d = geom
    conv = Conv2d(C, 3, k, stride=s, padding=p, dilation=d, rng=rng).astype(np.float64)
    conv.params["b"][...] = rng.standard_normal(3)
    errors = check_layer_gradients(conv, rng.standard_normal((N, C, H, W)), rng)
    assert set(errors) == {"x", "W", "b"}


def test_conv2d_gradients_without_bias_and_in_eval_mode(rng):
    conv = Conv2d(2, 3, 3, stride=2, padding=1, bias=False, rng=rng).astype(np.float64)
    assert list(conv.params) == ["W"]
    conv.eval()                          # eval: columns are not kept, backward unrolls again
    check_layer_gradients(conv, rng.standard_normal((2, 2, 7, 6)), rng)


def test_conv2d_chunked_path_matches_whole_batch(rng, monkeypatch):
    """Past CACHE_BYTES the batch is unrolled in chunks of images (SSD300 at batch 32): same numbers."""
    x = rng.standard_normal((5, 3, 9, 8))
    dy = rng.standard_normal((5, 4, 9, 8))
    conv = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    y_whole = conv.forward(x)
    dx_whole = conv.backward(dy)
    grads_whole = {k: g.copy() for k, g in conv.grads.items()}
    conv.zero_grad()
    one_image = 3 * 9 * 9 * 8 * 8
    monkeypatch.setattr(conv_mod, "CACHE_BYTES", 0)
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 2 * one_image)  # chunks of 2, 2, 1 images
    assert conv._chunk(5, 27, 72, 8) == 2
    np.testing.assert_allclose(conv.forward(x), y_whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(conv.backward(dy), dx_whole, rtol=1e-13, atol=1e-13)
    for key, g in grads_whole.items():
        np.testing.assert_allclose(conv.grads[key], g, rtol=1e-12, atol=1e-12)
    check_layer_gradients(conv, rng.standard_normal((3, 3, 6, 5)), rng)


def test_conv2d_directional_check_large(rng):
    """A VGG-sized slice (16 -> 32 channels at 24x24, batch 4): one directional derivative."""
    conv = Conv2d(16, 32, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((4, 16, 24, 24))
    r = rng.standard_normal((4, 32, 24, 24))

    def loss_and_grads():
        y = conv.forward(x)
        conv.zero_grad()
        dx = conv.backward(r)
        return float(np.sum(y * r)), [dx, conv.grads["W"], conv.grads["b"]]

    analytic, numeric = directional_check(loss_and_grads, [x, conv.params["W"], conv.params["b"]], rng)
    assert analytic != 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_accumulates_and_leaves_dy_alone(dtype, rng):
    """Two backward passes without zero_grad: W's and b's gradients are exactly twice one pass's."""
    conv = Conv2d(2, 3, 3, padding=1, rng=rng).astype(dtype)
    x = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
    dy = rng.standard_normal((2, 3, 5, 5)).astype(dtype)
    dy_copy = dy.copy()
    conv.forward(x)
    conv.backward(dy)
    first = {k: g.copy() for k, g in conv.grads.items()}
    assert set(first) == {"W", "b"} and all(np.abs(g).min() > 0 for g in first.values())
    conv.forward(x)
    conv.backward(dy)
    for key in ("W", "b"):
        np.testing.assert_array_equal(conv.grads[key], 2 * first[key], err_msg=key)
    np.testing.assert_array_equal(dy, dy_copy)
    conv.zero_grad()
    assert not conv.grads["W"].any() and not conv.grads["b"].any()


def test_input_grad_false_skips_dx_only(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    dy = rng.standard_normal((2, 4, 6, 6))
    a = Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(1)).astype(np.float64)
    b = Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(1), input_grad=False).astype(np.float64)
    a.forward(x)
    a.backward(dy)
    b.forward(x)
    assert b.backward(dy) is None
    np.testing.assert_allclose(b.grads["W"], a.grads["W"], rtol=1e-14)
    np.testing.assert_allclose(b.grads["b"], a.grads["b"], rtol=1e-14)


def test_conv2d_on_device(xp, rng):
    """The layer on the array's device (im2col + GEMM on the CPU, CuPy kernels + cuBLAS on a GPU) gives
    the numbers of the per-tap NumPy reference, which shares no code with either path."""
    x = rng.standard_normal((2, 3, 9, 9))
    dy = rng.standard_normal((2, 4, 5, 5))
    dev = Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, rng=np.random.default_rng(2)).astype(np.float64)
    dev.params["b"][...] = rng.standard_normal(4)
    W, b = dev.params["W"].copy(), dev.params["b"].copy()
    dev.to("cuda" if xp is not np else "cpu")
    y = dev.forward(xp.asarray(x))
    dx = dev.backward(xp.asarray(dy))
    dx_ref, dW_ref, db_ref = conv_backward_ref(x, W, dy, stride=2, padding=1)
    np.testing.assert_allclose(to_cpu(y), conv_forward_ref(x, W, b, stride=2, padding=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_cpu(dx), dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_cpu(dev.grads["W"]), dW_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_cpu(dev.grads["b"]), db_ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# PyTorch cross-checks (float32)
# ---------------------------------------------------------------------------------------------------
def _scaled_err(a, b):
    """max |a - b| / max |b|: the float32 relative error of a whole tensor."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@requires_torch
@pytest.mark.parametrize("geom", GEOMETRIES + [(4, 16, 19, 19, 3, 1, 6, 6), (2, 32, 10, 10, 3, 2, 1, 1)],
                         ids=_geom_id)
def test_conv2d_matches_torch_float32(geom, rng):
    import torch
    import torch.nn.functional as F

    N, C, H, W, k, s, p, d = geom
    conv = Conv2d(C, 6, k, stride=s, padding=p, dilation=d, rng=rng)
    conv.params["b"][...] = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.params["W"], requires_grad=True)
    bt = torch.tensor(conv.params["b"], requires_grad=True)
    yt = F.conv2d(xt, wt, bt, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    yt.backward(torch.tensor(dy))
    assert y.dtype == dx.dtype == np.float32
    for name, ours, theirs in [("y", y, yt), ("dx", dx, xt.grad), ("dW", conv.grads["W"], wt.grad),
                               ("db", conv.grads["b"], bt.grad)]:
        assert _scaled_err(ours, theirs.detach().numpy()) <= 1e-5, name


# ---------------------------------------------------------------------------------------------------
# bad input and construction
# ---------------------------------------------------------------------------------------------------
def test_conv2d_rejects_bad_input():
    conv = Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"Conv2d: input must be 4-D .* got shape \(3, 8, 8\)"):
        conv.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: expected 3 input channels .* shape \(2, 5, 8, 8\)"):
        conv.forward(np.zeros((2, 5, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: input dtype must be float32 or float64, got int64"):
        conv.forward(np.zeros((2, 3, 8, 8), np.int64))
    with pytest.raises(ValueError, match=r"Conv2d: input dtype float64 .* parameter dtype float32"):
        conv.forward(np.zeros((2, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="Conv2d: input must be an array"):
        conv.forward([[1.0]])
    with pytest.raises(ValueError, match="too small"):
        Conv2d(3, 4, 5, rng=np.random.default_rng(0)).forward(np.zeros((1, 3, 4, 4), np.float32))
    conv.forward(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4, 8, 8\)"):
        conv.backward(np.zeros((2, 4, 7, 8), np.float32))


def test_conv2d_rejects_bad_construction():
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        Conv2d(0, 4, 3)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        Conv2d(3, 4, 0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        Conv2d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="dilation must be an int or a pair"):
        Conv2d(3, 4, 3, dilation=1.5)
    with pytest.raises(ValueError, match="init='glorot' is not known"):
        Conv2d(3, 4, 3, init="glorot")


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        Conv2d(3, 4, 3).backward(np.zeros((1, 4, 1, 1), np.float32))


def test_parameter_names_shapes_and_state_dict(rng):
    conv = Conv2d(3, 8, (3, 5), rng=rng)
    assert [(n, p.shape) for n, p, _ in conv.named_parameters()] == [("W", (8, 3, 3, 5)), ("b", (8,))]
    assert conv.params["W"].dtype == np.float32
    other = Conv2d(3, 8, (3, 5), rng=np.random.default_rng(99))
    other.load_state_dict(conv.state_dict())
    np.testing.assert_array_equal(other.params["W"], conv.params["W"])
    assert "kernel_size=(3, 5)" in repr(conv)


# ---------------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------------
def test_xavier_is_caffes_fan_in_uniform(rng):
    shape = (256, 64, 3, 3)
    w = xavier_uniform(shape, rng)
    bound = np.sqrt(3.0 / (64 * 9))
    assert fan_in(shape) == 576
    assert w.dtype == np.float32
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    assert abs(w.var() - 1.0 / 576) < 0.03 / 576       # U(-a, a) has variance a^2/3 = 1/fan_in


def test_he_is_normal_with_variance_2_over_fan_in(rng):
    w = he_normal((256, 64, 3, 3), rng, dtype=np.float64)
    assert abs(w.var() - 2.0 / 576) < 0.03 * 2.0 / 576
    assert abs(w.mean()) < 1e-3


def test_conv2d_init_is_reproducible_and_bias_starts_at_zero():
    a = Conv2d(3, 4, 3, init="he", rng=np.random.default_rng(5))
    b = Conv2d(3, 4, 3, init="he", rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.params["W"], b.params["W"])
    assert not a.params["b"].any()
    with pytest.raises(ValueError, match="not known"):
        init_weight("zeros", (2, 2), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------
# ReLU after a convolution: in place in both passes (minissd/nn/relu.py; the SSD trunk uses it)
# ---------------------------------------------------------------------------------------------------
def test_relu_inplace_backward_writes_over_dy_and_matches_the_twin(rng):
    from minissd.nn import ReLU, relu_backward_ref

    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        want = relu_backward_ref(x, dy)
        plain = ReLU()
        plain.forward(x.copy())
        dy_copy = dy.copy()
        np.testing.assert_array_equal(plain.backward(dy_copy), want)
        np.testing.assert_array_equal(dy_copy, dy)                  # not in place: dy untouched
        relu = ReLU(inplace=True)
        relu.forward(x.copy())
        dx = relu.backward(dy_copy)
        assert dx is dy_copy                                        # in place: dx over dy
        np.testing.assert_array_equal(dx, want)
        relu.forward(x.copy())
        frozen = dy.copy()
        frozen.flags.writeable = False
        dx = relu.backward(frozen)                                  # read-only dy: a new array
        assert dx is not frozen
        np.testing.assert_array_equal(dx, want)


def test_model_trunk_relus_are_in_place_and_the_model_matches_out_of_place(rng):
    from minissd.model import build_model
    from minissd.nn import ReLU

    model = build_model("small", 5, np.random.default_rng(0))
    relus = [m for m in model.trunk if isinstance(m, ReLU)] + [m for m in model.extras if isinstance(m, ReLU)]
    assert relus and all(r.inplace for r in relus)
    x = rng.standard_normal((2, 3, 128, 128)).astype(np.float32)
    loc, conf = model.forward(x)
    d_loc = rng.standard_normal(loc.shape).astype(np.float32)
    d_conf = rng.standard_normal(conf.shape).astype(np.float32)
    model.zero_grad()
    model.backward(d_loc, d_conf)
    grads = {n: g.copy() for n, _, g in model.named_parameters()}
    for r in relus:
        r.inplace = False
    model.zero_grad()
    loc2, conf2 = model.forward(x)
    model.backward(d_loc, d_conf)
    np.testing.assert_array_equal(loc2, loc)
    np.testing.assert_array_equal(conf2, conf)
    for n, _, g in model.named_parameters():
        np.testing.assert_array_equal(g, grads[n], err_msg=n)


# ---------------------------------------------------------------------------------------------------
# The blocked CPU path (Conv2d._forward_blocks / _backward_blocks): blocks of images, one per thread
# at a time, each unrolled into cache-sized columns. BLOCK_BYTES is shrunk so that small inputs take it.
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geom", GEOMETRIES, ids=_geom_id)
@pytest.mark.parametrize("per_block", [1, 2])
def test_blocked_path_matches_reference(geom, per_block, rng, monkeypatch):
    """Blocks of one image and of two (the last one short), forward and all three gradients."""
    N, C, H, W, k, s, p, d = geom
    N += 5                                                   # 6-7 images: several blocks, a short last one
    F = max(4, C)                                            # at least as many filters as channels
    conv = Conv2d(C, F, k, stride=s, padding=p, dilation=d, rng=rng).astype(np.float64)
    conv.params["b"][...] = rng.standard_normal(F)
    x = rng.standard_normal((N, C, H, W))
    R, P = conv.params["W"][0].size, int(np.prod(conv_forward_ref(x[:1], conv.params["W"], None, s, p, d).shape[2:]))
    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", per_block * R * P * 8)
    assert conv._blocked(np, N, R, P, 8, F) == per_block, "the test must exercise the blocked path"
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    rdx, rdW, rdb = conv_backward_ref(x, conv.params["W"], dy, s, p, d)
    np.testing.assert_allclose(y, conv_forward_ref(x, conv.params["W"], conv.params["b"], s, p, d),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], rdW, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["b"], rdb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sum_dx", [True, False])
def test_blocked_group_and_no_input_grad_match_separate_references(sum_dx, rng, monkeypatch):
    """The fused loc+conf heads on the blocked path; a layer without input_grad gets dW, db and no dx."""
    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", 500)
    x = rng.standard_normal((5, 3, 6, 6))
    a = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    b = Conv2d(3, 2, 3, padding=1, rng=rng).astype(np.float64)
    ya, yb = conv_group_forward([a, b], x)
    dya, dyb = rng.standard_normal(ya.shape), rng.standard_normal(yb.shape)
    dx = conv_group_backward([a, b], [dya, dyb], sum_dx=sum_dx)
    ra, rb = conv_backward_ref(x, a.params["W"], dya, 1, 1), conv_backward_ref(x, b.params["W"], dyb, 1, 1)
    np.testing.assert_allclose(ya, conv_forward_ref(x, a.params["W"], a.params["b"], 1, 1), atol=1e-12)
    np.testing.assert_allclose(yb, conv_forward_ref(x, b.params["W"], b.params["b"], 1, 1), atol=1e-12)
    np.testing.assert_allclose(dx, ra[0] + rb[0], atol=1e-12)
    for layer, (_, dW, db) in ((a, ra), (b, rb)):
        np.testing.assert_allclose(layer.grads["W"], dW, atol=1e-12)
        np.testing.assert_allclose(layer.grads["b"], db, atol=1e-12)
    first = Conv2d(3, 4, 3, padding=1, rng=rng, input_grad=False).astype(np.float64)
    first.forward(x)
    assert first.backward(dya) is None
    np.testing.assert_allclose(first.grads["W"], conv_backward_ref(x, first.params["W"], dya, 1, 1)[1], atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# The direct forward of layers with few inputs per output (C*KH*KW <= 32, csrc/sgemm.h), AVX-512 only
# ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not own_gemm_supported(), reason="the direct convolution needs AVX-512F")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("shape, F, k, p", [
    ((3, 3, 128, 128), 16, 3, 1),    # the small model's conv1: rows of 8 full vectors
    ((2, 3, 17, 5), 5, 3, 1),        # a row shorter than a vector, fewer filters than a register group
    ((2, 1, 9, 33), 20, 3, 2),       # two filter groups (16 + 4), a row of 2 vectors + 1 lane
    ((1, 2, 4, 3), 7, 3, 0),         # no padding: an output of 2x1
    ((2, 3, 16, 16), 16, 3, 2),      # padding wider than the kernel's reach: a zero border
    ((2, 3, 1, 1), 3, 3, 1),         # a 1x1 image
    ((2, 3, 5, 40), 1, 3, 1),        # one filter (the dW kernel's filter pairs: a lone last one)
])
def test_direct_path_is_the_reference_and_the_gemm_path(threads, input_grad, shape, F, k, p, rng, monkeypatch):
    """The direct path (`Conv2d._direct`: forward, and dW/db when dL/dx is not wanted) against the
    float64 reference and against the im2col + GEMM path of the same layer (its twin, `_direct`
    switched off)."""
    x = rng.standard_normal(shape).astype(np.float32)
    with threads_set_to(threads), gemm_set_to("avx512"):
        conv = Conv2d(shape[1], F, k, padding=p, rng=rng, input_grad=input_grad)
        conv.params["b"][...] = rng.standard_normal(F)
        assert conv._direct(np, x, conv.params["W"].reshape(F, -1))
        y = conv.forward(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = conv.backward(dy)
        monkeypatch.setattr(Conv2d, "_direct", lambda *a: False)
        twin = Conv2d(shape[1], F, k, padding=p, rng=rng, input_grad=input_grad)
        twin.params["W"][...] = conv.params["W"]
        twin.params["b"][...] = conv.params["b"]
        y_twin = twin.forward(x)
        dx_twin = twin.backward(dy)
    W64 = conv.params["W"].astype(np.float64)
    ref = conv_forward_ref(x.astype(np.float64), W64, conv.params["b"].astype(np.float64), 1, p)
    _, rdW, rdb = conv_backward_ref(x.astype(np.float64), W64, dy.astype(np.float64), 1, p)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, y_twin, rtol=1e-5, atol=1e-5)
    if input_grad:
        np.testing.assert_allclose(dx, dx_twin, rtol=1e-5, atol=1e-5)
    else:
        assert dx is None and dx_twin is None
    scale = float(np.abs(rdW).max())
    np.testing.assert_allclose(conv.grads["W"], rdW, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(conv.grads["W"], twin.grads["W"], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(conv.grads["b"], rdb, rtol=1e-5, atol=1e-5 * float(np.abs(rdb).max()))


@pytest.mark.skipif(not own_gemm_supported(), reason="the direct convolution needs AVX-512F")
def test_direct_forward_is_taken_only_where_it_applies(rng):
    x3 = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with gemm_set_to("avx512"):
        assert Conv2d(3, 16, 3, padding=1, rng=rng)._direct(np, x3, np.zeros((16, 27), np.float32))
        assert not Conv2d(3, 16, 3, stride=2, rng=rng)._direct(np, x3, np.zeros((16, 27), np.float32))
        assert not Conv2d(3, 16, 3, dilation=2, rng=rng)._direct(np, x3, np.zeros((16, 27), np.float32))
        assert not Conv2d(4, 16, 3, rng=rng)._direct(np, x3, np.zeros((16, 36), np.float32))   # 4 channels
        assert not Conv2d(3, 16, 1, rng=rng)._direct(np, x3, np.zeros((16, 3), np.float32))    # not 3x3
        assert not Conv2d(3, 16, 3, rng=rng)._direct(np, x3.astype(np.float64), np.zeros((16, 27)))
    with gemm_set_to("blas"):
        assert not Conv2d(3, 16, 3, padding=1, rng=rng)._direct(np, x3, np.zeros((16, 27), np.float32))
    k = cpu_kernels()
    with pytest.raises(ValueError, match="a 3x3 kernel on at most 3 channels"):
        k.pool_direct_conv_forward(np.zeros((1, 4, 5, 5), np.float32), np.zeros((2, 4, 3, 3), np.float32), None,
                                   np.zeros((1, 2, 3, 3), np.float32), 0, 0, [0, 1])
    with pytest.raises(ValueError, match="y must be"):
        k.pool_direct_conv_forward(np.zeros((1, 3, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float32), None,
                                   np.zeros((1, 2, 5, 5), np.float32), 0, 0, [0, 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("per_block, bias, input_grad", [(1, True, True), (2, False, True), (2, True, False)])
def test_blocked_path_c_jobs_are_the_python_twin(dtype, threads, per_block, bias, input_grad, rng, monkeypatch):
    """The blocked path's C jobs (csrc/im2col.pyx, on the fork-join pool) against its Python twin
    (Conv2d._forward_blocks/_backward_blocks' numpy code, the pool switched off): y, dx, dW, db."""
    from minissd.nn import threads as threads_mod

    x = rng.standard_normal((7, 3, 9, 8)).astype(dtype)
    dy = rng.standard_normal((7, 5, 5, 4)).astype(dtype)
    b = rng.standard_normal(5)
    results = []
    for enabled in (True, False):
        monkeypatch.setitem(threads_mod._FORK_JOIN, "enabled", enabled)
        with threads_set_to(threads):
            conv = Conv2d(3, 5, 3, stride=2, padding=1, bias=bias, input_grad=input_grad,
                          rng=np.random.default_rng(1)).astype(dtype)
            if bias:
                conv.params["b"][...] = b
            monkeypatch.setattr(conv_mod, "BLOCK_BYTES", per_block * 27 * 20 * x.itemsize)
            assert conv._blocked(np, 7, 27, 20, x.itemsize, 5) == per_block
            assert (threads_mod.c_jobs() is not None) == enabled
            y = conv.forward(x).copy()
            dx = conv.backward(dy)
            results.append([y, dx, conv.grads["W"].copy()] + ([conv.grads["b"].copy()] if bias else []))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for c, py in zip(*results, strict=True):
        if py is None:
            assert c is None
        else:
            np.testing.assert_allclose(c, py, rtol=tol, atol=tol * float(np.abs(py).max()))


def test_blocked_path_is_bitwise_the_same_for_any_thread_count_and_accumulates(rng, monkeypatch):
    """dW and db are summed block by block in block order: 1 and 3 threads give identical bits, and a
    second backward adds to the gradients (never overwrites them)."""
    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", 2000)
    x = rng.standard_normal((7, 3, 9, 9)).astype(np.float32)
    dy = rng.standard_normal((7, 6, 9, 9)).astype(np.float32)
    results = []
    for threads in (1, 3):
        set_num_threads(threads)
        try:
            conv = Conv2d(3, 6, 3, padding=1, rng=np.random.default_rng(5))
            assert conv._blocked(np, 7, 27, 81, 4, 6) > 0
            y = conv.forward(x).copy()
            dx = conv.backward(dy).copy()
            once = conv.grads["W"].copy(), conv.grads["b"].copy()
            conv.forward(x)
            conv.backward(dy)
            np.testing.assert_allclose(conv.grads["W"], 2 * once[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(conv.grads["b"], 2 * once[1], rtol=1e-5, atol=1e-5)
            results.append((y, dx) + once)
        finally:
            set_num_threads(0)
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)


def test_blocked_path_is_taken_only_on_the_cpu_for_large_batches():
    """Columns of at most two blocks, images under half a block, or fewer filters than channels run as
    one whole-batch GEMM; the block size depends on the shapes only."""
    conv = Conv2d(16, 32, 3, padding=1, rng=np.random.default_rng(0))
    per_image = 16 * 9 * 64 * 64 * 4
    assert conv._blocked(np, 32, 16 * 9, 64 * 64, 4, 32) == max(1, conv_mod.BLOCK_BYTES // per_image)
    assert conv._blocked(np, 1, 16 * 9, 8 * 8, 4, 32) == 0
    assert conv._blocked(np, 32, 128 * 9, 8 * 8, 4, 128) == 0      # 295 kB an image: under half a block
    assert conv._blocked(np, 32, 16 * 9, 64 * 64, 4, 8) == 0      # fewer filters than channels (a head)
    assert conv._blocked(object(), 32, 16 * 9, 64 * 64, 4, 32) == 0


# ---------------------------------------------------------------------------------------------------
# dL/dx as a convolution of dy (Conv2d._dx_by_transposed_conv): stride 1, fewer filters than channels
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,padding", [(3, 1), (3, 0), (1, 0), ((2, 3), (1, 0)), (3, 2)])
@pytest.mark.parametrize("chunked", [False, True])
def test_transposed_dx_matches_reference(kernel, padding, chunked, rng, monkeypatch):
    """F < C, stride 1: dx from the flipped, channel-swapped filters over padded dy == the reference,
    on the whole batch and in chunks of images (columns too large to keep)."""
    conv = Conv2d(6, 2, kernel, padding=padding, rng=rng).astype(np.float64)
    x = rng.standard_normal((5, 6, 7, 8))
    if chunked:
        monkeypatch.setattr(conv_mod, "CACHE_BYTES", 0)
        monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 1)          # one image at a time
    assert conv._transposed_dx(np, 2, 6, True) and conv._blocked(np, 5, 54, 56, 8, 2) == 0
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    rdx, rdW, rdb = conv_backward_ref(x, conv.params["W"], dy, 1, padding)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], rdW, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["b"], rdb, rtol=1e-12, atol=1e-12)


def test_transposed_dx_of_a_fused_group_is_the_sum_of_the_references(rng, monkeypatch):
    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", 1)                  # would block, were it not a head
    x = rng.standard_normal((5, 8, 6, 6))
    a = Conv2d(8, 2, 3, padding=1, rng=rng).astype(np.float64)
    b = Conv2d(8, 3, 3, padding=1, rng=rng).astype(np.float64)
    assert a._blocked(np, 5, 72, 36, 8, 5) == 0 and a._transposed_dx(np, 5, 8, True)
    ya, yb = conv_group_forward([a, b], x)
    dya, dyb = rng.standard_normal(ya.shape), rng.standard_normal(yb.shape)
    dx = conv_group_backward([a, b], [dya, dyb])
    ra, rb = conv_backward_ref(x, a.params["W"], dya, 1, 1), conv_backward_ref(x, b.params["W"], dyb, 1, 1)
    np.testing.assert_allclose(dx, ra[0] + rb[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.grads["W"], ra[1], atol=1e-12)
    np.testing.assert_allclose(b.grads["W"], rb[1], atol=1e-12)


def test_transposed_dx_is_taken_only_where_it_applies():
    """Only F < C, stride 1, no dilation, padding at most K-1, one dx, on the CPU."""
    head = Conv2d(128, 36, 3, padding=1, rng=np.random.default_rng(0))
    assert head._transposed_dx(np, 36, 128, True)
    assert not head._transposed_dx(np, 36, 128, False)          # no dx wanted (or several separate dx)
    assert not head._transposed_dx(np, 128, 128, True)          # as many filters as channels
    assert not head._transposed_dx(object(), 36, 128, True)     # the GPU keeps col2im
    assert not Conv2d(128, 36, 3, stride=2, padding=1)._transposed_dx(np, 36, 128, True)
    assert not Conv2d(128, 36, 3, padding=6, dilation=6)._transposed_dx(np, 36, 128, True)
    assert not Conv2d(128, 36, 3, padding=3)._transposed_dx(np, 36, 128, True)

"""Behaviours of Conv2d (blocked CPU path, transposed dx) and im2col/col2im that the second mutation run of
minissd/nn (issue 16; tests/mutation/nn.md) found unpinned by tests/test_conv.py and test_mutants_nn.py."""
import importlib
import threading

import numpy as np
import pytest

from conftest import threads_set_to
from minissd.nn import (
    Conv2d,
    col2im,
    col2im_ref,
    conv_backward_ref,
    conv_forward_ref,
    conv_output_size,
    im2col,
)
from minissd.nn import conv as conv_mod
from minissd.nn import threads as threads_mod
from minissd.nn.conv import conv_group_backward, conv_group_forward

im2col_mod = importlib.import_module("minissd.nn.im2col")   # the package exports the function under that name


@pytest.fixture
def three_threads():
    """Three CPU threads for the test, the count before it afterwards."""
    with threads_set_to(3):
        yield


class _RecordingKernels:
    """The compiled kernels, each call's (name, start, stop) recorded (stop None when not passed)."""

    def __init__(self, kernels):
        self._kernels = kernels
        self._lock = threading.Lock()
        self.calls = []

    def __getattr__(self, name):
        fn = getattr(self._kernels, name)

        def call(*args):
            with self._lock:
                self.calls.append((name, args[11] if len(args) > 11 else None, args[12] if len(args) > 12 else None))
            return fn(*args)

        return call


def _ranges_cover_once(calls, name, total):
    """The recorded ranges of ``name`` are disjoint, each with an explicit stop, and cover range(total)."""
    ranges = sorted((a, b) for n, a, b in calls if n == name)
    assert ranges and all(b is not None for _, b in ranges), ranges
    assert ranges[0][0] == 0 and ranges[-1][1] == total, ranges
    assert all(r[1] == s[0] for r, s in zip(ranges, ranges[1:], strict=False)), ranges
    return len(ranges)


# ---------------------------------------------------------------------------------------------------
# im2col / col2im wrappers
# ---------------------------------------------------------------------------------------------------
def test_col2im_defaults_are_stride_one_no_padding_no_dilation(rng):
    """col2im(col, x_shape, k) == col2im_ref(col, x_shape, k, 1, 0, 1).
    Kills col2im's default stride 2, padding 1, dilation 2."""
    col = rng.standard_normal((2, 3 * 9, 3 * 4))
    np.testing.assert_allclose(col2im(col, (2, 3, 5, 6), 3), col2im_ref(col, (2, 3, 5, 6), 3, 1, 0, 1),
                               rtol=1e-13, atol=1e-13)


def test_col2im_names_a_bad_col_and_checks_each_property_of_out():
    """An integer col is named "col2im: col"; an out of the wrong shape, dtype or layout is refused, each
    on its own (kills the message mutants and `or` -> `and` in the out check)."""
    with pytest.raises(ValueError, match="^col2im: col must be float32 or float64"):
        col2im(np.zeros((1, 18, 9), dtype=np.int32), (1, 2, 5, 5), 3)
    col = np.zeros((1, 18, 9))
    for out in (np.empty((1, 2, 5, 4)),                          # shape
                np.empty((1, 2, 5, 5), dtype=np.float32),        # dtype
                np.empty((1, 2, 5, 10))[:, :, :, ::2]):          # not C-contiguous
        with pytest.raises(ValueError, match="col2im: out must be"):
            col2im(col, (1, 2, 5, 5), 3, out=out)


def test_im2col_and_col2im_split_their_jobs_into_disjoint_ranges_across_threads(rng, monkeypatch, three_threads):
    """With three threads each kernel call gets an explicit [start, stop) and the calls cover every
    (image, row) / (image, channel) job once; a range running to the end would race with the next
    thread's range on the shared output planes. Kills col2im's dropped `stop` (equivalent with one thread).
    Where the compiled fork-join pool exists (`threads.fork_join`), it is switched off: this pins the
    `parallel_for` path."""
    rec = _RecordingKernels(im2col_mod.cpu_kernels())
    monkeypatch.setattr(im2col_mod, "cpu_kernels", lambda: rec)
    monkeypatch.setattr(im2col_mod, "fork_join", lambda: None, raising=False)   # the parallel_for path
    x = rng.standard_normal((2, 24, 16, 16))
    col = im2col(x, 3, padding=1)
    assert _ranges_cover_once(rec.calls, "im2col", 2 * 24 * 9) > 1
    back = col2im(col, x.shape, 3, padding=1)
    assert _ranges_cover_once(rec.calls, "col2im", 2 * 24) > 1
    np.testing.assert_allclose(back, col2im_ref(col, x.shape, 3, 1, 1), rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------------------
# The blocked CPU path
# ---------------------------------------------------------------------------------------------------
def _block_bytes_for(monkeypatch, conv, x, images):
    """Shrink BLOCK_BYTES so that ``conv`` on ``x`` takes the blocked path with ``images`` per block."""
    R = conv.params["W"][0].size
    P = int(np.prod(conv_forward_ref(x[:1], conv.params["W"], None, conv.stride, conv.padding,
                                     conv.dilation).shape[2:]))
    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", images * R * P * x.itemsize)
    assert conv._blocked(np, x.shape[0], R, P, x.itemsize, conv.out_channels) == images
    return R, P


@pytest.mark.parametrize("images", [1, 2])
def test_blocked_path_without_bias_matches_reference(images, rng, monkeypatch):
    """A layer without a bias on the blocked path: y copied out of the block's GEMM as is, dW and dx.
    Kills the `np.copyto(y[n0:n0 + mm], src)` mutants of _forward_blocks (that branch ran in no test)."""
    conv = Conv2d(3, 5, 3, padding=1, bias=False, rng=rng).astype(np.float64)
    x = rng.standard_normal((5, 3, 6, 7))
    _block_bytes_for(monkeypatch, conv, x, images)
    y = conv.forward(x)
    np.testing.assert_allclose(y, conv_forward_ref(x, conv.params["W"], None, 1, 1), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    rdx, rdW, _ = conv_backward_ref(x, conv.params["W"], dy, 1, 1)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], rdW, rtol=1e-12, atol=1e-12)
    assert "b" not in conv.grads


def test_blocked_group_sum_of_dx_with_blocks_of_several_images(rng, monkeypatch):
    """The fused group's summed dx on the blocked path with two images a block: the block's columns are
    rows first (R, m, P), which the col2im kernel must be told (with one image a block both layouts are
    the same memory). Kills rows_first True -> False/None in the sum_dx branch of _backward_blocks."""
    x = rng.standard_normal((5, 3, 6, 6))
    a = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    b = Conv2d(3, 2, 3, padding=1, rng=rng).astype(np.float64)
    monkeypatch.setattr(conv_mod, "BLOCK_BYTES", 2 * 27 * 36 * 8)
    assert a._blocked(np, 5, 27, 36, 8, 6) == 2
    ya, yb = conv_group_forward([a, b], x)
    dya, dyb = rng.standard_normal(ya.shape), rng.standard_normal(yb.shape)
    dx = conv_group_backward([a, b], [dya, dyb], sum_dx=True)
    ra, rb = conv_backward_ref(x, a.params["W"], dya, 1, 1), conv_backward_ref(x, b.params["W"], dyb, 1, 1)
    np.testing.assert_allclose(dx, ra[0] + rb[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.grads["W"], ra[1], atol=1e-12)
    np.testing.assert_allclose(b.grads["b"], rb[2], atol=1e-12)


def test_blocked_path_unrolls_each_block_once_on_several_threads(rng, monkeypatch, three_threads):
    """Each thread takes its own range of blocks: forward and backward unroll every block exactly once.
    Kills `range(first, last)` -> `range(last)` in _forward_blocks / _backward_blocks (with one thread
    the two are the same; with several, later threads redo earlier blocks and race on their dx). The
    Python twin of the blocked path (the C block jobs are switched off with the fork-join pool)."""
    monkeypatch.setitem(threads_mod._FORK_JOIN, "enabled", False)
    conv = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((6, 3, 5, 5))
    _block_bytes_for(monkeypatch, conv, x, 1)
    seen = []
    unroll = conv._unroll_block

    def recording(x_, blk, *args):
        seen.append(blk)
        return unroll(x_, blk, *args)

    monkeypatch.setattr(conv, "_unroll_block", recording)
    y = conv.forward(x)
    assert sorted(seen) == list(range(6))
    seen.clear()
    conv.backward(np.ones_like(y))
    assert sorted(seen) == list(range(6))


def _workspace_dtypes(layer):
    return {np.dtype(key[2]) for key in layer.workspace._buffers}


def test_float32_layer_scratch_is_float32_on_the_blocked_and_transposed_paths(rng, monkeypatch):
    """A float32 layer's scratch buffers are float32 (a float64 buffer would double the memory, and its
    GEMMs run at float64 speed). Kills dtype -> None in the _scratch/workspace calls of _forward_blocks,
    _backward_blocks and _dx_by_transposed_conv (the results are the same up to rounding)."""
    conv = Conv2d(3, 4, 3, padding=1, rng=rng)
    x = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    _block_bytes_for(monkeypatch, conv, x, 1)
    conv.backward(conv.forward(x))
    assert _workspace_dtypes(conv) == {np.dtype(np.float32)}
    head = Conv2d(6, 2, 3, padding=1, rng=rng)
    assert head._transposed_dx(np, 2, 6, True)
    head.backward(head.forward(rng.standard_normal((2, 6, 5, 5)).astype(np.float32)))
    assert _workspace_dtypes(head) == {np.dtype(np.float32)}


def test_blocked_path_needs_a_fresh_forward_for_each_backward(rng, monkeypatch):
    """After a blocked backward the layer forgets its input: a second backward is the RuntimeError of
    any backward before forward (kills `self._x = ""` after _backward_blocks)."""
    conv = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((5, 3, 5, 5))
    _block_bytes_for(monkeypatch, conv, x, 1)
    dy = np.ones_like(conv.forward(x))
    conv.backward(dy)
    with pytest.raises(RuntimeError, match="before forward"):
        conv.backward(dy)


@pytest.mark.parametrize("N, P, blocked", [
    (2, 16384, 0),      # images of one block each, columns of exactly two blocks: the whole-batch GEMM
    (3, 16384, 1),      # three blocks of one image
    (9, 8192, 2),       # images of exactly half a block: two a block
    (9, 8191, 0),       # images just under half a block
])
def test_blocked_path_thresholds_are_inclusive_as_documented(N, P, blocked):
    """`_blocked`: columns that fit in two blocks (<=) and images under half a block (<) stay on the
    whole-batch path. Kills `<=` -> `<`, `2 * BLOCK_BYTES` -> `2 / BLOCK_BYTES` and `2 * per_image` ->
    `3 * per_image`."""
    conv = Conv2d(4, 8, 3, rng=np.random.default_rng(0))
    R, itemsize = 16, 4                                   # 16 * 4 * 16384 bytes = 1 MiB = BLOCK_BYTES
    assert conv_mod.BLOCK_BYTES == R * itemsize * 16384
    assert conv._blocked(np, N, R, P, itemsize, 8) == blocked


@pytest.mark.parametrize("padding", [(3, 1), (1, 3)])
def test_transposed_dx_needs_the_padding_of_both_axes_below_the_kernel(padding, rng):
    """Padding of K or more on either axis would need a negative padding of dy: that layer keeps col2im,
    and its dx is still the reference's. Kills `PH <= KH + 1` and `PW <= KW + 1`."""
    conv = Conv2d(6, 2, 3, padding=padding, rng=rng).astype(np.float64)
    assert not conv._transposed_dx(np, 2, 6, True)
    x = rng.standard_normal((2, 6, 5, 5))
    dy = rng.standard_normal(conv.forward(x).shape)
    np.testing.assert_allclose(conv.backward(dy), conv_backward_ref(x, conv.params["W"], dy, 1, padding)[0],
                               rtol=1e-12, atol=1e-12)


def test_a_head_takes_the_transposed_dx_and_a_group_of_separate_dx_does_not(rng, monkeypatch):
    """A head (fewer filters than channels) gets dx from the transposed convolution; a fused group whose
    dx are wanted separately (sum_dx=False) or a head without input_grad does not. Kills `transposed =
    None`, `_transposed_dx(None, ...)`, `want=None`, and `and` -> `or`, `== 1` -> `!= 1` / `== 2`, `is
    not None` -> `is None` in the `want` argument (the separate dx of a group would come out as one sum)."""
    calls = []

    def spy(layer):
        real = layer._dx_by_transposed_conv
        monkeypatch.setattr(layer, "_dx_by_transposed_conv", lambda *a: (calls.append(layer), real(*a))[1])

    x = rng.standard_normal((2, 8, 5, 5))
    head = Conv2d(8, 3, 3, padding=1, rng=rng).astype(np.float64)
    spy(head)
    dy = rng.standard_normal((2, 3, 5, 5))
    head.forward(x)
    np.testing.assert_allclose(head.backward(dy), conv_backward_ref(x, head.params["W"], dy, 1, 1)[0],
                               rtol=1e-12, atol=1e-12)
    assert calls == [head]

    a = Conv2d(8, 2, 3, padding=1, rng=rng).astype(np.float64)
    b = Conv2d(8, 3, 3, padding=1, rng=rng).astype(np.float64)
    spy(a)
    ya, yb = conv_group_forward([a, b], x)
    dya, dyb = rng.standard_normal(ya.shape), rng.standard_normal(yb.shape)
    dx = conv_group_backward([a, b], [dya, dyb], sum_dx=False)
    ra, rb = conv_backward_ref(x, a.params["W"], dya, 1, 1), conv_backward_ref(x, b.params["W"], dyb, 1, 1)
    np.testing.assert_allclose(dx, ra[0] + rb[0], rtol=1e-12, atol=1e-12)
    assert calls == [head]

    first = Conv2d(8, 3, 3, padding=1, rng=rng, input_grad=False).astype(np.float64)
    spy(first)
    first.forward(x)
    assert first.backward(dy) is None
    np.testing.assert_allclose(first.grads["W"], conv_backward_ref(x, first.params["W"], dy, 1, 1)[1], atol=1e-12)
    assert calls == [head]


# ---------------------------------------------------------------------------------------------------
# Columns kept from forward to backward; chunks
# ---------------------------------------------------------------------------------------------------
def _count_im2col(monkeypatch):
    calls = []
    real = conv_mod.im2col

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(conv_mod, "im2col", counting)
    return calls


@pytest.mark.parametrize("cache_extra, kept", [(0, True), (-1, False)])
def test_columns_up_to_cache_bytes_are_kept_for_backward(cache_extra, kept, rng, monkeypatch):
    """In training, columns of at most CACHE_BYTES are unrolled once and reused by backward; one byte
    over, backward unrolls the input again. Kills the `keep` size test's `*` -> `/` and `<=` -> `<`, and
    `_col_valid = None` at the end of _forward / `keep = None` in _backward."""
    conv = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((2, 3, 5, 5))
    monkeypatch.setattr(conv_mod, "CACHE_BYTES", 2 * 27 * 25 * 8 + cache_extra)
    calls = _count_im2col(monkeypatch)
    y = conv.forward(x)
    assert calls == [2]
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    assert calls == ([2] if kept else [2, 2])
    np.testing.assert_allclose(dx, conv_backward_ref(x, conv.params["W"], dy, 1, 1)[0], rtol=1e-12, atol=1e-12)


def test_kept_columns_larger_than_a_chunk_are_made_in_one_piece(rng, monkeypatch):
    """Columns kept for backward (under CACHE_BYTES) are one buffer of the whole batch even when that is
    over CHUNK_BYTES. Kills `step = max(1, N) if keep and False else ...` in _forward and _backward."""
    conv = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((3, 3, 5, 5))
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 1)
    calls = _count_im2col(monkeypatch)
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    assert calls == [3]
    np.testing.assert_allclose(dx, conv_backward_ref(x, conv.params["W"], dy, 1, 1)[0], rtol=1e-12, atol=1e-12)


def test_columns_too_large_to_keep_are_made_one_chunk_at_a_time(rng, monkeypatch):
    """Over CACHE_BYTES (or in eval mode) forward and backward unroll chunks of CHUNK_BYTES: here one image
    each. Kills `step = max(1, N) if keep or True else ...` in _forward and _backward."""
    conv = Conv2d(3, 4, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((3, 3, 5, 5))
    monkeypatch.setattr(conv_mod, "CACHE_BYTES", 0)
    monkeypatch.setattr(conv_mod, "CHUNK_BYTES", 27 * 25 * 8)
    calls = _count_im2col(monkeypatch)
    y = conv.forward(x)
    assert calls == [1, 1, 1]
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    assert calls == [1] * 6
    np.testing.assert_allclose(dx, conv_backward_ref(x, conv.params["W"], dy, 1, 1)[0], rtol=1e-12, atol=1e-12)


def test_backward_copies_dy_on_several_threads_from_the_right_images(rng, three_threads):
    """A batch large enough that the copy of dy into the GEMM layout is split across threads: each range
    copies its own images. Kills `dy[n0 - a:n0 + c]` in _backward (the same as `n0 + a` for a = 0)."""
    conv = Conv2d(1, 16, 3, padding=1, rng=rng).astype(np.float64)
    x = rng.standard_normal((48, 1, 16, 16))            # 16 * 256 values an image: ranges of 16 images
    dy = rng.standard_normal(conv.forward(x).shape)
    rdx, rdW, rdb = conv_backward_ref(x, conv.params["W"], dy, 1, 1)
    np.testing.assert_allclose(conv.backward(dy), rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], rdW, rtol=1e-10)
    np.testing.assert_allclose(conv.grads["b"], rdb, rtol=1e-10)


# ---------------------------------------------------------------------------------------------------
# The fork-join branches (threads.fork_join, after a1373bf): third nn mutation run
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """One CPU thread (no fork-join pool) for the test, the count before it afterwards."""
    with threads_set_to(1):
        yield


def test_fork_join_gemms_split_by_columns_rows_and_k_on_several_threads(rng, monkeypatch, three_threads):
    """With the grain shrunk, each fork-join GEMM runs as 3 ranges: _gemm by rows (A taller than B is
    wide) and by columns, _gemm_nt by rows (K < F) and by K with its parts added in order. Kills
    _gemm_nt's `parts[2:]`, `acc - p` and parts of shape (n, K, R); small test layers run these
    GEMMs as one range."""
    assert threads_mod.fork_join() is not None
    monkeypatch.setattr(conv_mod, "_GEMM_GRAIN", 8)
    for shape_a, shape_b in (((30, 5), (5, 4)), ((4, 5), (5, 30))):
        A, B = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
        out = np.full((shape_a[0], shape_b[1]), np.nan)
        np.testing.assert_allclose(conv_mod._gemm(A, B, out), A @ B, rtol=1e-12, atol=1e-12)
    for F, K in ((30, 5), (4, 60)):
        A, B = rng.standard_normal((F, K)), rng.standard_normal((3, K))
        np.testing.assert_allclose(conv_mod._gemm_nt(A, B), A @ B.T, rtol=1e-12, atol=1e-12)


def test_gemms_and_a_small_map_layer_on_one_thread(rng, one_thread):
    """On one thread there is no fork-join pool: the row-split conditions must not reach for it
    (_gemm `or` / `fj is None and`, _gemm_nt likewise) and the Python-pool fallbacks must hold
    (_transpose_images over the images, not the channels: more images than channels shows it). A 1x1
    output map with more filters than images makes A taller than B is wide."""
    A, B = rng.standard_normal((30, 5)), rng.standard_normal((5, 4))
    np.testing.assert_allclose(conv_mod._gemm(A, B, np.empty((30, 4))), A @ B, rtol=1e-12, atol=1e-12)
    A, B = rng.standard_normal((30, 5)), rng.standard_normal((3, 5))
    np.testing.assert_allclose(conv_mod._gemm_nt(A, B), A @ B.T, rtol=1e-12, atol=1e-12)
    for C, F, padding, shape in ((3, 8, 0, (2, 3, 3, 3)), (3, 2, 1, (5, 3, 4, 4))):
        conv = Conv2d(C, F, 3, padding=padding, rng=rng).astype(np.float64)
        x = rng.standard_normal(shape)
        y = conv.forward(x)
        np.testing.assert_allclose(y, conv_forward_ref(x, conv.params["W"], conv.params["b"], 1, padding),
                                   rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        rdx, rdW, rdb = conv_backward_ref(x, conv.params["W"], dy, 1, padding)
        np.testing.assert_allclose(conv.backward(dy), rdx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(conv.grads["W"], rdW, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strided", ["src", "dst"])
def test_copy_images_leaves_rows_that_are_not_contiguous_to_numpy(strided, rng, three_threads):
    """The fork-join row copy reads and writes P contiguous values a row; _copy_images hands it only
    arrays with a unit stride along the last axis (kills `!=` for `==` in either stride test)."""
    count, F, P = 6, 3, 5
    src = rng.standard_normal((count, F, 2 * P))
    dst = np.zeros((count, F, 2 * P))
    if strided == "src":
        src, dst = src[:, :, ::2], dst[:, :, :P]
    else:
        src, dst = src[:, :, :P], dst[:, :, ::2]
    conv_mod._copy_images(dst, src, count, F * P)
    assert np.array_equal(dst, src)


# ---------------------------------------------------------------------------------------------------
# Construction and messages
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, kwargs, message", [
    ((0, 4, 3), {}, "^Conv2d: in_channels must be a positive int"),
    ((3, 0, 3), {}, "^Conv2d: out_channels must be a positive int"),
    ((3, 4, 0), {}, "^Conv2d kernel_size must be >= 1"),
    ((3, 4, 3), dict(stride=0), "^Conv2d stride must be >= 1"),
    ((3, 4, 3), dict(padding=-1), "^Conv2d padding must be >= 0"),
    ((3, 4, 3), dict(dilation=0), "^Conv2d dilation must be >= 1"),
])
def test_conv2d_names_its_bad_argument(args, kwargs, message):
    """Each constructor check names the layer and the argument as written (kills the name mutants)."""
    with pytest.raises(ValueError, match=message):
        Conv2d(*args, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_keeps_its_init_and_makes_every_parameter_in_its_dtype(dtype):
    """``init`` is kept as given; W and b are made in the layer's dtype (a float64 bias in a float32 layer
    would be promoted silently). Kills `self.init = None` and the bias's dropped `dtype=`."""
    conv = Conv2d(3, 4, 3, init="he", dtype=dtype, rng=np.random.default_rng(0))
    assert conv.init == "he"
    assert {p.dtype for p in conv.params.values()} == {np.dtype(dtype)}


@pytest.mark.parametrize("layers, message", [(1, "^Conv2d.backward: dy must have shape"),
                                             (2, "^conv_group_backward: dy must have shape")])
def test_backward_names_the_call_with_the_bad_dy(layers, message, rng):
    """A dy of the wrong shape is reported as Conv2d.backward's or conv_group_backward's."""
    convs = [Conv2d(3, 4, 3, rng=rng) for _ in range(layers)]
    x = np.zeros((1, 3, 5, 5), dtype=np.float32)
    conv_group_forward(convs, x)
    with pytest.raises(ValueError, match=message):
        if layers == 1:
            convs[0].backward(np.zeros((1, 4, 2, 2), dtype=np.float32))
        else:
            conv_group_backward(convs, [np.zeros((1, 4, 2, 2), dtype=np.float32)] * 2)


def test_im2col_names_a_bad_x():
    """A non-array x is the ValueError about its shape; an integer x is named "im2col: x" (kills
    `getattr(x, "ndim")` without a default and the name mutants of check_float)."""
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        im2col([[1.0]], 3)
    with pytest.raises(ValueError, match="^im2col: x must be float32 or float64"):
        im2col(np.zeros((1, 1, 4, 4), dtype=np.int16), 3)


def test_im2col_checks_each_property_of_out():
    """An out of the wrong dtype or layout is refused, each on its own (kills `or` -> `and` in im2col's
    check of `out`; the wrong shape is tests/test_conv.py's)."""
    x = np.zeros((1, 2, 5, 5))
    for out in (np.empty((1, 18, 9), dtype=np.float32), np.empty((1, 18, 18))[:, :, ::2]):
        with pytest.raises(ValueError, match="im2col: out must be"):
            im2col(x, 3, out=out)


def test_conv_output_size_defaults_and_geometry_names():
    """conv_output_size(size, kernel) is stride 1, no padding, no dilation; im2col's geometry check names
    kernel_size and dilation (kills the defaults of conv_output_size and the names given to `pair`)."""
    assert conv_output_size(10, 3) == 8
    x = np.zeros((1, 1, 5, 5))
    with pytest.raises(ValueError, match="^kernel_size must be >= 1"):
        im2col(x, 0)
    with pytest.raises(ValueError, match="^dilation must be >= 1"):
        im2col(x, 3, dilation=0)

"""2-D convolution: the plain reference first, then the layer (im2col + one GEMM per batch).

A convolution with F filters of shape (C, KH, KW), stride (SH, SW), padding (PH, PW) and dilation
(DH, DW) is, for every image n, filter f and output pixel (oh, ow),

    y[n, f, oh, ow] = b[f] + sum over c, kh, kw of W[f, c, kh, kw] * x[n, c, oh*SH - PH + kh*DH,
                                                                         ow*SW - PW + kw*DW]

with x taken as 0 outside the image (cross-correlation, as in Caffe and PyTorch). `conv_forward_ref` /
`conv_backward_ref` write exactly that, one kernel tap (kh, kw) at a time, and its three gradients.

The layer `Conv2d` computes the same sum as one matrix product once the input is unrolled by
``im2col`` (minissd/nn/im2col.py):

    col = im2col(x)                       # (N, C*KH*KW, OH*OW)
    y   = W.reshape(F, -1) @ col + b      # (N, F, OH*OW), already NCHW

and its backward pass is three products and the adjoint of the unrolling:

    dW   = sum_n dy[n] @ col[n].T         # (F, C*KH*KW)
    db   = sum over n and pixels of dy    # (F,)
    dcol = W.reshape(F, -1).T @ dy        # (N, C*KH*KW, OH*OW)
    dx   = col2im(dcol)                   # (N, C, H, W): each dcol entry added back where it was read

tests/test_conv.py checks Conv2d == conv_*_ref on random inputs, forward and backward.

Several layers of one geometry that read the same input (SSD's loc and conf heads of a source map) run
as one: `conv_group_forward` unrolls the input once and multiplies by the layers' weights stacked,
`conv_group_backward` gets every layer's dW and db from one stacked GEMM and the sum of their dx from
one more GEMM and one col2im (``sum_dx=True``; with False each dx is made separately and added, the
numbers of separate layers). The parameters stay in each layer. tests/test_conv.py checks the group
against the separate references.

SSD uses stride 2 (extra layers), padding, and dilation 6 (fc6, the "atrous" conv of section 3 of the
paper, which keeps fc6's receptive field after pool5 became 3x3/s1).

Paper: section 3 ("Base network": fc6/fc7 converted to convolutions, atrous algorithm).
"""
from __future__ import annotations

import threading

import numpy as np

from ..backend import get_array_module
from .checks import check_input, pair, positive_int
from .gemm import matmul
from .im2col import col2im, conv_geometry, im2col
from .init import init_weight
from .module import Module
from .threads import c_jobs, cpu_kernels, fork_join, get_gemm, parallel_for, parallel_sum, split

# Column buffers above this many bytes are not kept from forward to backward: backward unrolls the
# input again, one chunk of images at a time. Below it, keeping the buffer saves an im2col per step.
CACHE_BYTES = 512 * 2**20
# Largest column buffer made at once when the whole batch does not fit in CACHE_BYTES (SSD300 at
# batch 32: conv1_2's full buffer would be 32 * 576 * 300 * 300 * 4 B = 6.6 GB).
CHUNK_BYTES = 128 * 2**20
# The CPU path convolves a batch in blocks of images whose columns take about this many bytes, one
# block at a time per thread: unroll, multiply, write out, while the block's columns are still in the
# core's cache (1 MiB L2 on the development machines). Batches whose columns fit in two blocks run as
# one GEMM over the batch instead (see `Conv2d._blocked`).
BLOCK_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------------
# The reference: plain NumPy, one kernel tap at a time.
# --------------------------------------------------------------------------------------------------
def _taps(KH, KW, SH, SW, DH, DW, OH, OW):
    """For each tap (kh, kw): the index of the padded input that tap reads for every output pixel,
    ``xpad[:, :, oh*SH + kh*DH, ow*SW + kw*DW]`` over all (oh, ow)."""
    for kh in range(KH):
        for kw in range(KW):
            h0, w0 = kh * DH, kw * DW
            yield kh, kw, (slice(None), slice(None), slice(h0, h0 + SH * (OH - 1) + 1, SH),
                           slice(w0, w0 + SW * (OW - 1) + 1, SW))


def conv_forward_ref(x, W, b=None, stride=1, padding=0, dilation=1):
    """y = conv(x, W) + b for x (N, C, H, W), W (F, C, KH, KW), b (F,) or None -> y (N, F, OH, OW).

    For each tap (kh, kw), the pixels it reads form an (N, C, OH, OW) array ``tap``, and
    ``y[n, f] += sum_c W[f, c, kh, kw] * tap[n, c]``.
    """
    x, W = np.asarray(x), np.asarray(W)
    F, _, KH, KW = W.shape
    (N, C, H, Wd), _, (SH, SW), (PH, PW), (DH, DW), (OH, OW) = conv_geometry(
        x.shape, (KH, KW), stride, padding, dilation)
    xpad = np.zeros((N, C, H + 2 * PH, Wd + 2 * PW), dtype=x.dtype)
    xpad[:, :, PH:PH + H, PW:PW + Wd] = x
    y = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for kh, kw, window in _taps(KH, KW, SH, SW, DH, DW, OH, OW):
        y += np.einsum("nchw,fc->nfhw", xpad[window], W[:, :, kh, kw])
    if b is not None:
        y += np.asarray(b).reshape(1, F, 1, 1)
    return y


def conv_backward_ref(x, W, dy, stride=1, padding=0, dilation=1):
    """Gradients of `conv_forward_ref` given dy = dL/dy (N, F, OH, OW): returns ``(dx, dW, db)``.

    Every product in the forward sum sends dy back to both of its factors:
    ``dW[f, c, kh, kw] = sum over n, oh, ow of dy[n, f, oh, ow] * tap[n, c, oh, ow]``,
    ``dtap[n, c] += sum_f W[f, c, kh, kw] * dy[n, f]`` (added onto the pixels the tap read), and
    ``db[f] = sum over n, oh, ow of dy[n, f, oh, ow]``.
    """
    x, W, dy = np.asarray(x), np.asarray(W), np.asarray(dy)
    F, _, KH, KW = W.shape
    (N, C, H, Wd), _, (SH, SW), (PH, PW), (DH, DW), (OH, OW) = conv_geometry(
        x.shape, (KH, KW), stride, padding, dilation)
    if dy.shape != (N, F, OH, OW):
        raise ValueError(f"conv_backward_ref: dy must have shape {(N, F, OH, OW)}, got {dy.shape}")
    xpad = np.zeros((N, C, H + 2 * PH, Wd + 2 * PW), dtype=x.dtype)
    xpad[:, :, PH:PH + H, PW:PW + Wd] = x
    dxpad = np.zeros_like(xpad)
    dW = np.zeros_like(W)
    for kh, kw, window in _taps(KH, KW, SH, SW, DH, DW, OH, OW):
        dW[:, :, kh, kw] = np.einsum("nfhw,nchw->fc", dy, xpad[window])
        dxpad[window] += np.einsum("nfhw,fc->nchw", dy, W[:, :, kh, kw])
    db = dy.sum(axis=(0, 2, 3))
    return dxpad[:, :, PH:PH + H, PW:PW + Wd].copy(), dW, db


# --------------------------------------------------------------------------------------------------
# GEMMs and copies split across the CPU threads (minissd/nn/threads.py); one call on the GPU.
# --------------------------------------------------------------------------------------------------
_GEMM_GRAIN = 1 << 21       # multiply-adds per thread below which splitting costs more than it saves


def _gemm(A, B, out):
    """out = A @ B for 2-D arrays; on the CPU split across threads by the columns of B, or, on the
    fork-join pool, by the rows of A when A has more rows than B has columns (the weights of a small
    map's layer at a small batch: each thread then reads half of them, not all)."""
    if get_array_module(B) is not np:
        return get_array_module(B).matmul(A, B, out=out)
    fj = fork_join()
    if fj is not None and A.shape[0] > B.shape[1]:
        fj.pool_gemm(A, B, out, split(A.shape[0], max(1, _GEMM_GRAIN // max(1, A.shape[1] * B.shape[1]))),
                     split_rows=True)
        return out
    grain = max(1, _GEMM_GRAIN // max(1, A.shape[0] * A.shape[1]))
    if fj is not None:
        fj.pool_gemm(A, B, out, split(B.shape[1], grain))
        return out
    parallel_for(B.shape[1], lambda a, b: matmul(A, B[:, a:b], out=out[:, a:b]), grain=grain)
    return out


def _gemm_nt(A, B):
    """A @ B.T for A (F, K), B (R, K). On the CPU K is split across threads and the parts are summed in
    range order; on the fork-join pool, when K is shorter than F, the rows of A are split instead (no
    parts to add: each thread computes whole rows)."""
    if get_array_module(B) is not np:
        return A @ B.T
    fj = fork_join()
    if fj is not None and A.shape[1] < A.shape[0]:
        out = np.empty((A.shape[0], B.shape[0]), dtype=np.result_type(A, B))
        fj.pool_gemm(A, B.T, out, split(A.shape[0], max(1, _GEMM_GRAIN // max(1, A.shape[1] * B.shape[0]))),
                     split_rows=True)
        return out
    grain = max(1, _GEMM_GRAIN // max(1, A.shape[0] * B.shape[0]))
    if fj is not None:
        bounds = split(A.shape[1], grain)
        parts = np.empty((len(bounds) - 1, A.shape[0], B.shape[0]), dtype=np.result_type(A, B))
        fj.pool_gemm_parts(A, B, parts, bounds)
        acc = parts[0]
        for p in parts[1:]:                  # in range order, as parallel_sum adds
            acc = acc + p
        return acc
    return parallel_sum(A.shape[1], lambda a, b: matmul(A[:, a:b], B[:, a:b].T), grain=grain)


def _transpose_images(dst, yt, b=None):
    """dst (m, F, P) = yt (F, m, P) transposed, plus b (1, F, 1) if given, image ranges split across
    threads on the CPU. Written with ``out=``: no temporary (a fresh y-sized array per layer per step
    cost page faults: a third of conv1's forward time in the small model)."""
    xp = get_array_module(dst)

    def job(a, c):
        src = yt[:, a:c].transpose(1, 0, 2)
        if b is None:
            xp.copyto(dst[a:c], src)
        else:
            xp.add(src, b, out=dst[a:c])

    if xp is not np:
        job(0, dst.shape[0])
        return
    grain = max(1, (1 << 16) // max(1, dst.shape[1] * dst.shape[2]))
    fj = fork_join()
    if fj is not None:
        fj.pool_rows(yt.transpose(1, 0, 2), dst, None if b is None else np.ascontiguousarray(b.reshape(-1)),
                     dst.shape[1], dst.shape[2], split(dst.shape[0], grain))
        return
    parallel_for(dst.shape[0], job, grain=grain)


def _copy_images(dst, src, count, per_image):
    """dst[:count] = src[:count] (both (count, F, P), any strides along the first two axes), image ranges
    split across threads on the CPU."""
    if get_array_module(dst) is not np:
        dst[...] = src
        return
    grain = max(1, (1 << 16) // max(1, per_image))
    fj = fork_join()
    if fj is not None and dst.strides[2] == dst.itemsize and src.strides[2] == src.itemsize:
        fj.pool_rows(src, dst, None, dst.shape[1], dst.shape[2], split(count, grain))
        return

    def job(a, b):
        dst[a:b] = src[a:b]

    parallel_for(count, job, grain=grain)


# --------------------------------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------------------------------
class Conv2d(Module):
    """y = W * x + b (cross-correlation, as in Caffe and PyTorch) by im2col + GEMM.

    Parameters
    ----------
    in_channels, out_channels : C and F.
    kernel_size, stride, padding, dilation : int or (h, w) pair.
    bias : learn a per-filter bias ``b`` (F,).
    init : "xavier" (the SSD authors' Caffe filler, U(+-sqrt(3/fan_in))) or "he" (N(0, 2/fan_in));
        biases start at 0. See minissd/nn/init.py.
    rng : numpy Generator for the initial weights (pass one for reproducible runs).
    dtype : float32 for training, float64 for gradient checks (or ``module.astype``).
    input_grad : when False, `backward` skips dL/dx and returns None (the first layer of a network,
        whose input is the image, saves a GEMM and a col2im).

    Shapes: x (N, C, H, W) -> y (N, F, OH, OW), OH = floor((H + 2*PH - DH*(KH-1) - 1) / SH) + 1.
    Params: ``W`` (F, C, KH, KW), ``b`` (F,).

    Buffers: in training, the columns of a batch under CACHE_BYTES are kept in this layer from forward
    to backward and reused from step to step; the per-call scratch (output before the NCHW transpose,
    column chunks of large batches) comes from ``self.workspace``, which the whole model shares
    (minissd/nn/workspace.py). ``clear_cache()`` releases both.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, init: str = "xavier", rng: np.random.Generator | None = None,
                 dtype=np.float32, input_grad: bool = True):
        super().__init__()
        self.in_channels = positive_int(in_channels, "Conv2d: in_channels")
        self.out_channels = positive_int(out_channels, "Conv2d: out_channels")
        self.kernel_size = pair(kernel_size, "Conv2d kernel_size", 1)
        self.stride = pair(stride, "Conv2d stride", 1)
        self.padding = pair(padding, "Conv2d padding", 0)
        self.dilation = pair(dilation, "Conv2d dilation", 1)
        self.input_grad = bool(input_grad)
        self.init = init
        rng = rng if rng is not None else np.random.default_rng()
        KH, KW = self.kernel_size
        shape = (self.out_channels, self.in_channels, KH, KW)
        self.add_param("W", init_weight(init, shape, rng, dtype))
        if bias:
            self.add_param("b", np.zeros(self.out_channels, dtype=dtype))
        self._x = None          # input of the last forward (backward unrolls it again if needed)
        self._col = None        # this layer's column buffer, rows first: (C*KH*KW, N, OH*OW), kept
                                # from forward to backward and from step to step (clear_cache drops it)
        self._col_valid = False
        self._out_hw = None

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if "b" not in self.params:
            s += ", bias=False"
        return s

    def clear_own_cache(self) -> None:
        self._x = None
        self._col = None
        self._col_valid = False

    # -- helpers -------------------------------------------------------------------------------
    def _conv_args(self):
        return self.kernel_size, self.stride, self.padding, self.dilation

    def _chunk(self, N, rows, pixels, itemsize):
        """Images per im2col chunk so that one chunk's columns stay under CHUNK_BYTES."""
        per_image = rows * pixels * itemsize
        return max(1, min(N, CHUNK_BYTES // max(per_image, 1)))

    def _column_buffer(self, xp, shape, dtype):
        """This layer's column buffer of ``shape``, reused across steps (big fresh arrays cost page
        faults); it holds the columns from forward to backward."""
        buf = self._col
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype or get_array_module(buf) is not xp:
            self._col = None
            buf = xp.empty(shape, dtype=dtype)
            self._col = buf
        return buf

    # -- the blocked CPU path ------------------------------------------------------------------------
    # On the CPU a batch whose columns are larger than two blocks is convolved BLOCK_BYTES of columns
    # at a time: each thread takes a range of blocks of m images and, for each, unrolls them into its
    # own small column buffer, multiplies and writes the result out while the columns are still in its
    # cache. The whole-batch column buffer (75 MB for the small model's conv2 at batch 32) never goes
    # to memory and back, and the two threads work on separate images instead of splitting one GEMM.
    # Backward unrolls each block again (cheaper than keeping 75 MB), and gets each block's share of
    # dW and db; the shares are added in block order, so the result does not depend on the threads.
    def _blocked(self, xp, N, R, P, itemsize, F):
        """Images per block for the blocked CPU path, or 0 for the whole-batch path: on the GPU, for
        columns that fit in two blocks, for images of under half a block (on the small model's 8x8 maps
        and below, measured on a quiet 2-core machine, re-unrolling in backward and GEMMs of a few
        hundred columns cost more than the cache saves), and for layers with fewer filters (``F``, all
        of a fused group) than input channels: SSD's heads, whose dx comes from dy
        (`_dx_by_transposed_conv`), so that the columns kept from forward serve dW alone; the 16x16
        head of the small model took 0.88x (2 threads) the blocked time that way. Depends on the shapes
        only, never on the number of threads."""
        if xp is not np or F < self.in_channels:
            return 0
        per_image = max(1, R * P * itemsize)
        if N * per_image <= 2 * BLOCK_BYTES or 2 * per_image < BLOCK_BYTES:
            return 0
        return max(1, min(N, BLOCK_BYTES // per_image))

    # -- the direct CPU path (few inputs per output) ---------------------------------------------------
    def _direct(self, xp, x, W2d):
        """Whether this layer runs the direct AVX-512 convolution (csrc/sgemm.h) instead of im2col + GEMM:
        on the CPU in float32 with the own GEMM chosen (`minissd.nn.threads.set_gemm`), a 3x3 kernel on
        at most 3 input channels (the image's first layer), stride 1, no dilation. There im2col writes
        27 values per output pixel for GEMMs with K = 27 (forward) or N = 27 (dW). Forward and dW/db
        (`_backward_direct`); dL/dx, when wanted, by a GEMM and col2im."""
        return (xp is np and x.dtype == np.float32 and self.kernel_size == (3, 3) and self.in_channels <= 3
                and W2d.shape[1] == 9 * self.in_channels and self.stride == (1, 1) and self.dilation == (1, 1)
                and get_gemm() == "avx512" and c_jobs() is not None)

    def _forward_direct(self, x, W2d, bias, shape):
        """y (N, F, OH, OW) by `pool_direct_conv_forward`, images split across the threads."""
        y = np.empty(shape, dtype=x.dtype)
        W = np.ascontiguousarray(W2d).reshape(shape[1], *self.params["W"].shape[1:])
        b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        c_jobs().pool_direct_conv_forward(x, W, b, y, *self.padding, split(shape[0]))
        return y

    def _dx_by_gemm(self, dy, W2d, dx):
        """dL/dx alone, chunk by chunk: dcol = W2d.T @ dy (rows first), then col2im into ``dx``."""
        N, C, H, Wd = dx.shape
        F, R = W2d.shape
        P = dy.shape[2]
        step = self._chunk(N, R, P, dx.itemsize)
        for n0 in range(0, N, step):
            m = min(N, n0 + step) - n0
            dyt = self.workspace.get(np, "y", (F, m, P), dx.dtype)
            _copy_images(dyt.transpose(1, 0, 2), dy[n0:n0 + m], m, F * P)
            col = self.workspace.get(np, "col", (R, m, P), dx.dtype)
            _gemm(W2d.T, dyt.reshape(F, m * P), col.reshape(R, m * P))
            col2im(col, (m, C, H, Wd), *self._conv_args(), out=dx[n0:n0 + m], rows_first=True)

    def _backward_direct(self, dy):
        """dW and db of a direct-path layer by `pool_direct_conv_dw` (dL/dx, when wanted, by
        `_dx_by_gemm`): one part per image, added in image order (the same bits whatever the threads,
        and whether or not dL/dx is computed)."""
        x = self._x
        N, F = dy.shape[:2]
        if N == 0:                                       # an empty batch adds nothing
            return
        dW_parts = np.empty((N, F, self.params["W"][0].size), np.float32)
        db_parts = np.empty((N, F), np.float32)
        c_jobs().pool_direct_conv_dw(x, *self.kernel_size, np.ascontiguousarray(dy), dW_parts, db_parts,
                                     *self.padding, split(N))
        dW, db = dW_parts[0], db_parts[0]
        for n in range(1, N):
            dW = dW + dW_parts[n]
            db = db + db_parts[n]
        self.grads["W"].reshape(F, -1)[...] += dW
        if "b" in self.params:
            self.grads["b"] += db

    def _scratch(self, name, shape, dtype):
        """This thread's scratch buffer ``name`` (one per pool thread, from the shared workspace)."""
        return self.workspace.get(np, f"{name}/{threading.get_ident()}", shape, dtype)

    def _transposed_dx(self, xp, Ft, C, want):
        """Whether dL/dx is computed as a convolution of dy (see `_dx_by_transposed_conv`): on the CPU, for
        one dx (a layer, or a fused group's sum), stride 1, no dilation, and fewer output channels than
        input channels (SSD's heads: 36-54 filters on 128-1024 channels)."""
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = self._conv_args()
        return (xp is np and want and Ft < C and (SH, SW, DH, DW) == (1, 1, 1, 1)
                and PH <= KH - 1 and PW <= KW - 1)

    def _dx_by_transposed_conv(self, dyt, W_all, m, out):
        """dL/dx of ``m`` images from dy laid out rows first, ``dyt`` (Ft, m*OH*OW), into ``out`` (m, C, H, W).

        With stride 1 the adjoint of a convolution is itself a convolution: of dy, padded by K-1-P, with
        the filters flipped in space and their in/out channels swapped,
            dx[n, c, h, w] = sum over f, kh, kw of W[f, c, KH-1-kh, KW-1-kw] * dy_pad[n, f, h + kh, w + kw].
        When F < C its columns, (KH*KW*F, m*H*W), are smaller than the layer's own (C*KH*KW rows), and
        this replaces the GEMM into those columns and the col2im that scatters them back. ``dyt`` is
        unrolled as F*m one-channel images, which puts the rows in (kh, kw, f) order; the flipped
        weights are laid out to match."""
        (KH, KW), _, (PH, PW), _ = self._conv_args()
        Ft, C = W_all.shape[0], out.shape[1]
        OH, OW = self._out_hw
        H, Wd = out.shape[2], out.shape[3]
        flipped = W_all.reshape(Ft, C, KH, KW)[:, :, ::-1, ::-1].transpose(1, 2, 3, 0)   # (C, KH, KW, F)
        Wt2d = np.ascontiguousarray(flipped).reshape(C, KH * KW * Ft)
        colt = self.workspace.get(np, "tcol", (KH * KW, Ft * m, H * Wd), out.dtype)
        im2col(dyt.reshape(Ft * m, 1, OH, OW), (KH, KW), 1, (KH - 1 - PH, KW - 1 - PW), 1, out=colt,
               rows_first=True)
        dxt = self.workspace.get(np, "tdx", (C, m, H * Wd), out.dtype)
        _gemm(Wt2d, colt.reshape(KH * KW * Ft, m * H * Wd), dxt.reshape(C, m * H * Wd))
        _transpose_images(out.reshape(m, C, H * Wd), dxt)

    def _unroll_block(self, x, blk, m, R, P):
        """Block ``blk`` of ``m`` images of ``x``: its first image, its image count (the last block may be
        short) and its columns (R, count, P), unrolled into this thread's buffer."""
        n0 = blk * m
        mm = min(x.shape[0], n0 + m) - n0
        col = self._scratch("bcol", (R, mm, P), x.dtype)
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = self._conv_args()
        cpu_kernels().im2col(x[n0:n0 + mm], col, KH, KW, SH, SW, PH, PW, DH, DW, True, 0, mm * R)
        return n0, mm, col

    def _geometry(self, x):
        return (*x.shape, *self.kernel_size, *self.stride, *self.padding, *self.dilation)

    def _block_scratch(self, name, jobs, size, dtype):
        """``jobs`` scratch rows of ``size`` values for the C block jobs (from the shared workspace)."""
        return self.workspace.get(np, name, (jobs, size), dtype)

    def _forward_blocks(self, x, W2d, b, y, m):
        N = x.shape[0]
        F, R = W2d.shape
        P = y.shape[2]
        fj = c_jobs()
        if fj is not None:       # the blocks as C jobs on the fork-join pool (csrc/im2col.pyx)
            bounds = split(-(-N // m))
            jobs = len(bounds) - 1
            fj.pool_conv_forward_blocks(x, np.ascontiguousarray(W2d), None if b is None else
                                        np.ascontiguousarray(b.reshape(-1)), y,
                                        self._block_scratch("jcol", jobs, R * m * P, x.dtype),
                                        self._block_scratch("jy", jobs, F * m * P, x.dtype),
                                        self._geometry(x), m, P, bounds)
            return

        def job(first, last):
            for blk in range(first, last):
                n0, mm, col = self._unroll_block(x, blk, m, R, P)
                yt = self._scratch("by", (F, mm, P), x.dtype)
                matmul(W2d, col.reshape(R, mm * P), out=yt.reshape(F, mm * P))
                src = yt.transpose(1, 0, 2)                                  # (mm, F, P) view
                if b is None:
                    np.copyto(y[n0:n0 + mm], src)
                else:
                    np.add(src, b, out=y[n0:n0 + mm])

        parallel_for(-(-N // m), job)

    def _backward_blocks(self, layers, starts, Fs, W_all, dys, dxs, sum_dx, m):
        x = self._x
        N, C, H, Wd = x.shape
        Ft, R = W_all.shape
        P = dys[0].shape[2]
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = self._conv_args()
        k = cpu_kernels()
        nb = -(-N // m)
        dW_parts = [None] * nb
        db_parts = [None] * nb
        want_dx = [d is not None for d in dxs]

        def job(first, last):
            for blk in range(first, last):
                n0, mm, col = self._unroll_block(x, blk, m, R, P)
                dyt = self._scratch("by", (Ft, mm, P), x.dtype)
                for f0, F, dy in zip(starts, Fs, dys, strict=False):
                    np.copyto(dyt[f0:f0 + F].transpose(1, 0, 2), dy[n0:n0 + mm])
                dyt2 = dyt.reshape(Ft, mm * P)
                col2d = col.reshape(R, mm * P)
                db_parts[blk] = dyt2.sum(axis=1)
                dW_parts[blk] = matmul(dyt2, col2d.T)                      # (Ft, R)
                # the columns are spent: their buffer takes dcol = W.T @ dy, then col2im adds it back
                if sum_dx:
                    matmul(W_all.T, dyt2, out=col2d)
                    k.col2im(col, dxs[0][n0:n0 + mm], KH, KW, SH, SW, PH, PW, DH, DW, True, 0, mm * C)
                    continue
                for i, (f0, F) in enumerate(zip(starts, Fs, strict=False)):
                    if want_dx[i]:
                        matmul(W_all[f0:f0 + F].T, dyt2[f0:f0 + F], out=col2d)
                        k.col2im(col, dxs[i][n0:n0 + mm], KH, KW, SH, SW, PH, PW, DH, DW, True, 0, mm * C)

        fj = c_jobs()
        if fj is not None and len(layers) == 1:     # one layer: the blocks as C jobs (csrc/im2col.pyx)
            bounds = split(nb)
            jobs = len(bounds) - 1
            dW_parts = np.empty((nb, Ft, R), x.dtype)
            db_parts = np.empty((nb, Ft), x.dtype)
            fj.pool_conv_backward_blocks(x, np.ascontiguousarray(W_all), np.ascontiguousarray(dys[0]), dxs[0],
                                         self._block_scratch("jcol", jobs, R * m * P, x.dtype),
                                         self._block_scratch("jy", jobs, Ft * m * P, x.dtype),
                                         dW_parts, db_parts, self._geometry(x), m, P, bounds)
        else:
            parallel_for(nb, job)
        dW, db = dW_parts[0], db_parts[0]
        for blk in range(1, nb):                 # block order: the same sum whatever the threads
            dW = dW + dW_parts[blk]
            db = db + db_parts[blk]
        for c, f0, F in zip(layers, starts, Fs, strict=False):     # starts has one more entry
            c.grads["W"].reshape(F, R)[...] += dW[f0:f0 + F]
            if "b" in c.params:
                c.grads["b"] += db[f0:f0 + F]

    # -- the two passes ----------------------------------------------------------------------------
    # The batch is convolved by one GEMM per chunk of images, not one per image: the columns are laid
    # out rows first, (R, n, P) with R = C*KH*KW and P = OH*OW, so that
    #     Y (F, n*P) = W2d (F, R) @ col (R, n*P)
    # and one transposed copy (fused with the bias add, written in place) turns Y into NCHW. A few large GEMMs keep
    # OpenBLAS's threads busy where one small GEMM per image spends its time starting and joining them.
    def forward(self, x):
        W = self.params["W"]
        check_input("Conv2d", x, channels=self.in_channels, like=W)
        F = self.out_channels
        return self._forward(x, W.reshape(F, -1), self.params["b"] if "b" in self.params else None)

    def _forward(self, x, W2d, bias):
        """y = conv(x) with weights ``W2d`` (F, R) and ``bias`` (F,) or None; keeps what backward needs.
        `conv_group_forward` calls it with several layers' weights stacked."""
        xp = get_array_module(x)
        x = xp.ascontiguousarray(x)
        (N, _, _, _), _, _, _, _, (OH, OW) = conv_geometry(x.shape, *self._conv_args())
        F, R = W2d.shape
        P = OH * OW
        y = xp.empty((N, F, P), dtype=x.dtype)
        b = bias.reshape(1, F, 1) if bias is not None else None
        self._x = x
        self._out_hw = (OH, OW)
        self._col_valid = False
        if self._direct(xp, x, W2d):
            return self._forward_direct(x, W2d, bias, (N, F, OH, OW))
        m = self._blocked(xp, N, R, P, x.itemsize, F)
        if m:
            self._forward_blocks(x, W2d, b, y, m)
            return y.reshape(N, F, OH, OW)
        keep = self.training and N * R * P * x.itemsize <= CACHE_BYTES
        step = max(1, N) if keep else self._chunk(N, R, P, x.itemsize)
        for n0 in range(0, N, step):
            m = min(N, n0 + step) - n0
            if keep:
                col = self._column_buffer(xp, (R, N, P), x.dtype)
            else:
                col = self.workspace.get(xp, "col", (R, m, P), x.dtype)
            im2col(x[n0:n0 + m], *self._conv_args(), out=col, rows_first=True)
            yt = self.workspace.get(xp, "y", (F, m * P), x.dtype)
            _gemm(W2d, col.reshape(R, m * P), yt)                 # (F, m*P)
            # (F, m, P) -> (m, F, P) + bias, written in place: no temporary the size of y
            _transpose_images(y[n0:n0 + m], yt.reshape(F, m, P), b)
        self._col_valid = keep
        return y.reshape(N, F, OH, OW)

    def backward(self, dy):
        return self._backward([self], [dy])[0]

    def _backward(self, layers, dys, sum_dx=False):
        """Backward of ``layers`` (self first; the others ran in `conv_group_forward` on self's columns)
        for upstream gradients ``dys``: accumulates each layer's dW/db and returns the list of each
        layer's dL/dx (None for a layer without ``input_grad``).

        dW and db of all layers come from one stacked GEMM and one row sum (rows do not mix, so each
        layer's values are those of its own GEMM); then each layer's dx, one GEMM and one col2im at a
        time through the shared column buffer."""
        if self._x is None:
            raise RuntimeError("Conv2d.backward called before forward")
        x = self._x
        xp = get_array_module(x)
        N, C, H, Wd = x.shape
        OH, OW = self._out_hw
        Fs = [c.out_channels for c in layers]
        for F, dy in zip(Fs, dys, strict=True):
            if tuple(dy.shape) != (N, F, OH, OW):
                name = "Conv2d.backward" if len(layers) == 1 else "conv_group_backward"
                raise ValueError(f"{name}: dy must have shape {(N, F, OH, OW)}, got {tuple(dy.shape)}")
        Ft = sum(Fs)
        starts = np.concatenate([[0], np.cumsum(Fs)]).astype(int).tolist()
        W2ds = [c.params["W"].reshape(F, -1) for c, F in zip(layers, Fs, strict=True)]
        R, P = W2ds[0].shape[1], OH * OW
        dys = [dy.reshape(N, F, P) for dy, F in zip(dys, Fs, strict=True)]
        dxs = [xp.empty_like(x) if c.input_grad else None for c in layers]
        if sum_dx:
            dxs = dxs[:1]
        if len(layers) == 1 and self._direct(xp, x, W2ds[0]):
            self._backward_direct(dys[0].reshape(N, Ft, OH, OW))
            if dxs[0] is not None:
                self._dx_by_gemm(dys[0], W2ds[0], dxs[0])
            self._x = None
            return dxs
        m = self._blocked(xp, N, R, P, x.itemsize, Ft)
        W_all = xp.concatenate(W2ds) if len(W2ds) > 1 else W2ds[0]    # every layer's weights, stacked
        if m:
            self._backward_blocks(layers, starts, Fs, W_all, dys, dxs, sum_dx, m)
            self._x = None
            return dxs
        keep = self._col_valid
        step = max(1, N) if keep else self._chunk(N, R, P, x.itemsize)
        dbs = [None] * len(layers)
        transposed = self._transposed_dx(xp, Ft, C, len(dxs) == 1 and dxs[0] is not None)
        for n0 in range(0, N, step):
            m = min(N, n0 + step) - n0
            if keep:
                col = self._col
            else:
                col = self.workspace.get(xp, "col", (R, m, P), x.dtype)
                im2col(x[n0:n0 + m], *self._conv_args(), out=col, rows_first=True)
            col2d = col.reshape(R, m * P)
            dyt = self.workspace.get(xp, "y", (Ft, m, P), x.dtype)
            for f0, F, dy in zip(starts, Fs, dys, strict=False):
                dyt_images = dyt[f0:f0 + F].transpose(1, 0, 2)   # (m, F, P) view of (F, m, P)
                _copy_images(dyt_images, dy[n0:n0 + m], m, F * P)
            dyt = dyt.reshape(Ft, m * P)
            part = dyt.sum(axis=1)
            dW_all = _gemm_nt(dyt, col2d)                        # (Ft, m*P) @ (m*P, R)
            for i, (c, f0, F) in enumerate(zip(layers, starts, Fs, strict=False)):
                dbs[i] = part[f0:f0 + F] if dbs[i] is None else dbs[i] + part[f0:f0 + F]
                c.grads["W"].reshape(F, R)[...] += dW_all[f0:f0 + F]
            if transposed:
                self._dx_by_transposed_conv(dyt, W_all, m, dxs[0][n0:n0 + m])
                continue
            if sum_dx:
                # dx of the sum: one GEMM with the weights stacked, one col2im
                _gemm(W_all.T, dyt, col2d)
                col2im(col, (m, C, H, Wd), *self._conv_args(), out=dxs[0][n0:n0 + m], rows_first=True)
                continue
            for i, (f0, F, W2d) in enumerate(zip(starts, Fs, W2ds, strict=False)):
                if dxs[i] is not None:
                    # the columns are spent: their buffer takes dcol = W2d.T @ dy
                    _gemm(W2d.T, dyt[f0:f0 + F], col2d)            # (R, m*P)
                    col2im(col, (m, C, H, Wd), *self._conv_args(), out=dxs[i][n0:n0 + m], rows_first=True)
        for c, db in zip(layers, dbs, strict=True):
            if "b" in c.params and db is not None:
                c.grads["b"] += db
        self._col_valid = False
        self._x = None
        return dxs


def conv_group_forward(layers, x):
    """The outputs of several Conv2d layers of one geometry on the same input ``x``, from one im2col and
    one GEMM with their weights stacked (SSD's loc and conf heads of a source map). Each layer keeps
    its own parameters and gradients; `conv_group_backward` must follow before the first layer runs
    again. Returns the list of outputs (views of one array)."""
    layers = list(layers)
    lead = layers[0]
    for c in layers:
        if not isinstance(c, Conv2d):
            raise ValueError(f"conv_group_forward: layers must be Conv2d, got {type(c).__name__}")
        if (c.in_channels, c._conv_args()) != (lead.in_channels, lead._conv_args()) or \
                ("b" in c.params) != ("b" in lead.params):
            raise ValueError("conv_group_forward: the layers must share in_channels, kernel, stride, padding, "
                             "dilation and whether they have a bias")
        check_input("Conv2d", x, channels=c.in_channels, like=c.params["W"])
    xp = get_array_module(x)
    W2d = xp.concatenate([c.params["W"].reshape(c.out_channels, -1) for c in layers])
    b = xp.concatenate([c.params["b"] for c in layers]) if "b" in lead.params else None
    y = lead._forward(x, W2d, b)
    outs, f0 = [], 0
    for c in layers:
        outs.append(y[:, f0:f0 + c.out_channels])
        f0 += c.out_channels
    return outs


def conv_group_backward(layers, dys, sum_dx=True):
    """Backward of `conv_group_forward`: accumulates every layer's gradients and returns
    ``dx_1 + dx_2 + ...`` (each layer's dL/dx, added in order, as separate backward calls would)."""
    layers = list(layers)
    sum_dx = sum_dx and all(c.input_grad for c in layers)
    dxs = layers[0]._backward(layers, [get_array_module(dy).ascontiguousarray(dy) for dy in dys], sum_dx)
    dx = dxs[0]
    for d in dxs[1:]:
        dx = d if dx is None else (dx if d is None else dx + d)
    return dx

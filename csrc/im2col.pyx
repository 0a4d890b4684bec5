# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""CPU kernels for the convolution, max-pool and ReLU layers (minissd._im2col).

Every kernel writes into arrays it is handed; the Python wrappers in minissd/nn/conv.py and
minissd/nn/layers.py validate shapes, dtypes and contiguity first, so nothing here checks bounds.
Loops run without the GIL and, when the module is built with OpenMP (setup.py adds -fopenmp where the
compiler accepts it), in parallel over independent rows or planes; without OpenMP `prange` is a plain
loop and the results are the same bit for bit (each output element is written by one iteration, and
col2im sums its contributions in a fixed order).

Layout (docs/ARCHITECTURE.md): ``col`` is (N, C*KH*KW, OH*OW); row ``(c*KH + kh)*KW + kw`` holds, for
every output pixel ``(oh, ow)``, the input value ``x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]``
(zero outside the image). The NumPy twins are minissd.nn.conv.im2col_ref / col2im_ref.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0 and any sign of a (C division truncates toward zero)."""
    if a <= 0:
        return -((-a) // b)
    return (a + b - 1) // b


cdef inline Py_ssize_t _clamp(Py_ssize_t v, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def im2col(const floating[:, :, :, ::1] x, floating[:, :, ::1] col,
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
           Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW):
    """Fill ``col`` (N, C*KH*KW, OH*OW) from ``x`` (N, C, H, W); OH, OW are read from the caller's
    ``col`` through ``OH*OW`` and recomputed here from the geometry."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    cdef Py_ssize_t OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    cdef Py_ssize_t R = C * KH * KW
    cdef Py_ssize_t job, n, row, c, kh, kw, oh, ow, ih, iw0, lo, hi
    cdef floating* dst
    cdef const floating* src
    # one job = one row of one image's column matrix: N*C*KH*KW independent, contiguous writes
    for job in prange(N * R, nogil=True, schedule="static"):
        n = job // R
        row = job - n * R
        c = row // (KH * KW)
        kh = (row // KW) % KH
        kw = row % KW
        # output columns whose input column lies inside [0, W): the rest are zero padding
        lo = _clamp(_ceil_div(PW - kw * DW, SW), 0, OW)
        hi = _clamp(_ceil_div(W + PW - kw * DW, SW), lo, OW)
        for oh in range(OH):
            dst = &col[n, row, oh * OW]
            ih = oh * SH - PH + kh * DH
            if ih < 0 or ih >= H:
                memset(dst, 0, OW * sizeof(floating))
                continue
            src = &x[n, c, ih, 0]
            iw0 = kw * DW - PW
            if lo > 0:
                memset(dst, 0, lo * sizeof(floating))
            if SW == 1:
                for ow in range(lo, hi):
                    dst[ow] = src[ow + iw0]
            else:
                for ow in range(lo, hi):
                    dst[ow] = src[ow * SW + iw0]
            if hi < OW:
                memset(dst + hi, 0, (OW - hi) * sizeof(floating))


def col2im(const floating[:, :, ::1] col, floating[:, :, :, ::1] dx,
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
           Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW):
    """Overwrite ``dx`` (N, C, H, W) with the adjoint of im2col applied to ``col``.

    Each (n, c) plane is owned by one iteration, which zeroes it and then adds the KH*KW rows of
    ``col`` that read from it, in a fixed order: no races and a deterministic sum.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    cdef Py_ssize_t OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    cdef Py_ssize_t job, n, c, row, kh, kw, oh, ow, ih, iw0, lo, hi
    cdef floating* dst
    cdef const floating* src
    for job in prange(N * C, nogil=True, schedule="static"):
        n = job // C
        c = job - n * C
        memset(&dx[n, c, 0, 0], 0, H * W * sizeof(floating))
        for kh in range(KH):
            for kw in range(KW):
                row = (c * KH + kh) * KW + kw
                lo = _clamp(_ceil_div(PW - kw * DW, SW), 0, OW)
                hi = _clamp(_ceil_div(W + PW - kw * DW, SW), lo, OW)
                iw0 = kw * DW - PW
                for oh in range(OH):
                    ih = oh * SH - PH + kh * DH
                    if ih < 0 or ih >= H:
                        continue
                    dst = &dx[n, c, ih, 0]
                    src = &col[n, row, oh * OW]
                    if SW == 1:
                        for ow in range(lo, hi):
                            dst[ow + iw0] += src[ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow * SW + iw0] += src[ow]


def maxpool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, int[:, :, :, ::1] argmax,
                    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                    Py_ssize_t PH, Py_ssize_t PW):
    """y[n, c, oh, ow] = max of the window; argmax holds its flat index ih*W + iw in the plane.

    Padding counts as -inf (as in PyTorch and Caffe), so a window is clipped to the image; the caller
    guarantees every window keeps at least one pixel. Ties go to the first pixel in row-major order and
    NaN wins, as in PyTorch.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t job, n, c, oh, ow, hs, he, ws, we, ih, iw, best_i
    cdef floating best, v
    cdef const floating* plane
    cdef floating a0, a1, b0, b1
    cdef bint simple = (KH == 2 and KW == 2 and SH == 2 and SW == 2 and PH == 0 and PW == 0
                        and 2 * OH <= H and 2 * OW <= W)
    for job in prange(N * C, nogil=True, schedule="static"):
        n = job // C
        c = job - n * C
        plane = &x[n, c, 0, 0]
        if simple:
            # the 2x2/s2 case of every VGG stage: four loads, no window bookkeeping
            for oh in range(OH):
                for ow in range(OW):
                    best_i = 2 * oh * W + 2 * ow
                    best = plane[best_i]
                    v = plane[best_i + 1]
                    if v > best or v != v:
                        best = v
                        best_i = 2 * oh * W + 2 * ow + 1
                    v = plane[2 * oh * W + W + 2 * ow]
                    if v > best or v != v:
                        best = v
                        best_i = 2 * oh * W + W + 2 * ow
                    v = plane[2 * oh * W + W + 2 * ow + 1]
                    if v > best or v != v:
                        best = v
                        best_i = 2 * oh * W + W + 2 * ow + 1
                    y[n, c, oh, ow] = best
                    argmax[n, c, oh, ow] = <int>best_i
            continue
        for oh in range(OH):
            hs = oh * SH - PH
            he = hs + KH
            if he > H:
                he = H
            if hs < 0:
                hs = 0
            for ow in range(OW):
                ws = ow * SW - PW
                we = ws + KW
                if we > W:
                    we = W
                if ws < 0:
                    ws = 0
                best_i = hs * W + ws
                best = plane[best_i]
                for ih in range(hs, he):
                    for iw in range(ws, we):
                        v = plane[ih * W + iw]
                        if v > best or v != v:
                            best = v
                            best_i = ih * W + iw
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = <int>best_i


def maxpool_backward(const floating[:, :, :, ::1] dy, const int[:, :, :, ::1] argmax,
                     floating[:, :, :, ::1] dx):
    """Overwrite dx with zeros plus dy routed to each window's argmax (summed where windows overlap)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t job, n, c, oh, ow
    cdef floating* plane
    for job in prange(N * C, nogil=True, schedule="static"):
        n = job // C
        c = job - n * C
        plane = &dx[n, c, 0, 0]
        memset(plane, 0, H * W * sizeof(floating))
        for oh in range(OH):
            for ow in range(OW):
                plane[argmax[n, c, oh, ow]] += dy[n, c, oh, ow]


def relu_forward(const floating[::1] x, floating[::1] y):
    """y = max(x, 0) element-wise (NaN passes through, as in np.maximum and torch.relu)."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v
    for i in prange(n, nogil=True, schedule="static"):
        v = x[i]
        y[i] = 0 if v <= 0 else v


def relu_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """dx = dy where y > 0, else 0 (the subgradient 0 at the kink, as in PyTorch)."""
    cdef Py_ssize_t i, n = y.shape[0]
    for i in prange(n, nogil=True, schedule="static"):
        dx[i] = dy[i] if y[i] > 0 else 0


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int minissd_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int minissd_omp_max_threads(void) { return 1; }
    #endif
    """
    int minissd_omp_max_threads() nogil


def openmp_threads():
    """How many threads the parallel loops use (1 when the module was built without OpenMP)."""
    return minissd_omp_max_threads()

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""CPU kernels for the convolution, max-pool and ReLU layers (minissd._im2col).

Every kernel writes into arrays it is handed; the Python wrappers in minissd/nn/im2col.py,
pool.py and relu.py validate shapes, dtypes and contiguity first, so nothing here checks bounds.
Each kernel is a loop over independent jobs (rows of the column matrix, or (n, c) planes) that runs
without the GIL; ``start``/``stop`` select a range of jobs so that the wrappers can hand disjoint
ranges to their worker threads (minissd.nn.threads.parallel_for). Every output element is written by
exactly one job, and col2im sums its contributions in a fixed order, so the results do not depend on
how the jobs are split.

Layout (docs/ARCHITECTURE.md): ``col`` is (N, C*KH*KW, OH*OW); row ``(c*KH + kh)*KW + kw`` holds, for
every output pixel ``(oh, ow)``, the input value ``x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]``
(zero outside the image). The NumPy twins are minissd.nn.im2col.im2col_ref / col2im_ref.
"""
from cython cimport floating
from libc.string cimport memset

# Element-wise loops in plain C, written so that gcc -O3 if-converts and vectorises them (a Cython
# `if` inside a loop compiles to a branch, which random signs mispredict half the time).
cdef extern from *:
    """
    #define MINISSD_KERNELS(T, S)                                                                \
    static void minissd_relu_fwd_##S(const T* x, T* y, Py_ssize_t n) {                           \
        for (Py_ssize_t i = 0; i < n; ++i) { const T v = x[i]; y[i] = (v <= (T)0) ? (T)0 : v; }   \
    }                                                                                            \
    static void minissd_relu_bwd_##S(const T* y, const T* dy, T* dx, Py_ssize_t n) {             \
        for (Py_ssize_t i = 0; i < n; ++i) { const T d = dy[i]; dx[i] = (y[i] > (T)0) ? d : (T)0; } \
    }                                                                                            \
    static void minissd_pool2_##S(const T* x, T* y, int* am, Py_ssize_t W, Py_ssize_t OH,        \
                                  Py_ssize_t OW) {                                               \
        for (Py_ssize_t oh = 0; oh < OH; ++oh) {                                                 \
            const T* r0 = x + 2 * oh * W;                                                        \
            const T* r1 = r0 + W;                                                                \
            T* yo = y + oh * OW;                                                                 \
            int* ao = am + oh * OW;                                                              \
            const int base = (int)(2 * oh * W);                                                  \
            for (Py_ssize_t ow = 0; ow < OW; ++ow) {                                             \
                const T a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];  \
                const int i0 = base + 2 * (int)ow;                                               \
                T best = a; int bi = i0;                                                         \
                int t = (b > best) | (b != b); best = t ? b : best; bi = t ? i0 + 1 : bi;         \
                t = (c > best) | (c != c); best = t ? c : best; bi = t ? i0 + (int)W : bi;        \
                t = (d > best) | (d != d); best = t ? d : best; bi = t ? i0 + (int)W + 1 : bi;    \
                yo[ow] = best; ao[ow] = bi;                                                      \
            }                                                                                    \
        }                                                                                        \
    }
    MINISSD_KERNELS(float, f)
    MINISSD_KERNELS(double, d)

    /* A chain of dependent register-register adds (x += x), 16 per iteration: each waits for the
       previous one, and such an add has a latency of one cycle on every x86 core since the P6, so n
       iterations take 16*n cycles (the loop counter runs beside the chain). Not `add $1`: recent
       Intel cores fold immediate adds at rename, faster than one a cycle. benchmarks/_bench.py times
       this for the clock. Returns 16*n (-1 off x86). */
    static long long minissd_add_chain(long long n) {
        long long x = 1;
    #if defined(__x86_64__) || defined(__i386__)
        for (long long i = 0; i < n; ++i) {
            /* one add per statement: no newlines inside this string (it passes through a Python literal) */
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
            __asm__ __volatile__("add %0, %0" : "+r"(x)); __asm__ __volatile__("add %0, %0" : "+r"(x));
        }
        (void)x;
        return 16 * n;
    #else
        (void)n;
        return -1;
    #endif
    }
    """
    void minissd_relu_fwd_f(const float* x, float* y, Py_ssize_t n) nogil
    void minissd_relu_fwd_d(const double* x, double* y, Py_ssize_t n) nogil
    void minissd_relu_bwd_f(const float* y, const float* dy, float* dx, Py_ssize_t n) nogil
    void minissd_relu_bwd_d(const double* y, const double* dy, double* dx, Py_ssize_t n) nogil
    void minissd_pool2_f(const float* x, float* y, int* am, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW) nogil
    void minissd_pool2_d(const double* x, double* y, int* am, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW) nogil
    long long minissd_add_chain(long long n) nogil



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
           Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW, bint rows_first=False,
           Py_ssize_t start=0, Py_ssize_t stop=-1):
    """Fill ``col`` from ``x`` (N, C, H, W).

    ``col`` is (N, C*KH*KW, OH*OW), or (C*KH*KW, N, OH*OW) when ``rows_first`` (the layout in which
    one GEMM ``W2d @ col.reshape(R, N*OH*OW)`` convolves the whole batch).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    cdef Py_ssize_t OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    cdef Py_ssize_t R = C * KH * KW
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t job, n, row, c, kh, kw, oh, ow, ih, iw0, lo, hi
    cdef floating* base = &col[0, 0, 0]
    cdef floating* dst
    cdef const floating* src
    # one job = one (image, row) pair, numbered in memory order of col in either layout, so job j
    # writes the P contiguous values at base + j*P: independent, sequential writes. The indices move
    # by one per job (no divisions in the loop), and what depends on the row only is recomputed
    # when the row changes: once per N jobs in the rows-first layout (small maps spend most of
    # their time on this bookkeeping: 16 values a job on a 4x4 map).
    cdef Py_ssize_t end = stop if stop >= 0 else N * R
    cdef bint new_row = True
    if start >= end:
        return
    if rows_first:
        row = start // N
        n = start - row * N
    else:
        n = start // R
        row = start - n * R
    with nogil:
        for job in range(start, end):
            if new_row:
                c = row // (KH * KW)
                kh = (row // KW) % KH
                kw = row % KW
                # output columns whose input column lies inside [0, W): the rest are zero padding
                lo = _clamp(_ceil_div(PW - kw * DW, SW), 0, OW)
                hi = _clamp(_ceil_div(W + PW - kw * DW, SW), lo, OW)
                iw0 = kw * DW - PW
                new_row = False
            for oh in range(OH):
                dst = base + job * P + oh * OW
                ih = oh * SH - PH + kh * DH
                if ih < 0 or ih >= H:
                    memset(dst, 0, OW * sizeof(floating))
                    continue
                src = &x[n, c, ih, 0]
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
            # the next job
            if rows_first:
                n += 1
                if n == N:
                    n = 0
                    row += 1
                    new_row = True
            else:
                row += 1
                new_row = True
                if row == R:
                    row = 0
                    n += 1


def col2im(const floating[:, :, ::1] col, floating[:, :, :, ::1] dx,
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
           Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW, bint rows_first=False,
           Py_ssize_t start=0, Py_ssize_t stop=-1):
    """Overwrite ``dx`` (N, C, H, W) with the adjoint of im2col applied to ``col`` (either layout).

    Each (n, c) plane is owned by one iteration, which zeroes it and then adds the KH*KW rows of
    ``col`` that read from it, in a fixed order: no races and a deterministic sum.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    cdef Py_ssize_t OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    cdef Py_ssize_t P = OH * OW, R = C * KH * KW
    cdef Py_ssize_t job, n, c, row, kh, kw, oh, ow, ih, iw0, lo, hi
    cdef const floating* base = &col[0, 0, 0]
    cdef const floating* rowp
    cdef floating* dst
    cdef const floating* src
    with nogil:
        for job in range(start, stop if stop >= 0 else N * C):
            n = job // C
            c = job - n * C
            memset(&dx[n, c, 0, 0], 0, H * W * sizeof(floating))
            for kh in range(KH):
                for kw in range(KW):
                    row = (c * KH + kh) * KW + kw
                    if rows_first:
                        rowp = base + (row * N + n) * P
                    else:
                        rowp = base + (n * R + row) * P
                    lo = _clamp(_ceil_div(PW - kw * DW, SW), 0, OW)
                    hi = _clamp(_ceil_div(W + PW - kw * DW, SW), lo, OW)
                    iw0 = kw * DW - PW
                    for oh in range(OH):
                        ih = oh * SH - PH + kh * DH
                        if ih < 0 or ih >= H:
                            continue
                        dst = &dx[n, c, ih, 0]
                        src = rowp + oh * OW
                        if SW == 1:
                            for ow in range(lo, hi):
                                dst[ow + iw0] += src[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow * SW + iw0] += src[ow]


def maxpool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, int[:, :, :, ::1] argmax,
                    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                    Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t start=0, Py_ssize_t stop=-1):
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
    cdef bint simple = (KH == 2 and KW == 2 and SH == 2 and SW == 2 and PH == 0 and PW == 0
                        and 2 * OH <= H and 2 * OW <= W)
    with nogil:
        for job in range(start, stop if stop >= 0 else N * C):
            n = job // C
            c = job - n * C
            plane = &x[n, c, 0, 0]
            if simple:
                # the 2x2/s2 case of every VGG stage: four loads, no window bookkeeping, no branches
                if floating is float:
                    minissd_pool2_f(plane, &y[n, c, 0, 0], &argmax[n, c, 0, 0], W, OH, OW)
                else:
                    minissd_pool2_d(plane, &y[n, c, 0, 0], &argmax[n, c, 0, 0], W, OH, OW)
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
                     floating[:, :, :, ::1] dx, Py_ssize_t start=0, Py_ssize_t stop=-1):
    """Overwrite dx with zeros plus dy routed to each window's argmax (summed where windows overlap)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t job, n, c, oh, ow
    cdef floating* plane
    with nogil:
        for job in range(start, stop if stop >= 0 else N * C):
            n = job // C
            c = job - n * C
            plane = &dx[n, c, 0, 0]
            memset(plane, 0, H * W * sizeof(floating))
            for oh in range(OH):
                for ow in range(OW):
                    plane[argmax[n, c, oh, ow]] += dy[n, c, oh, ow]


def relu_forward(const floating[::1] x, floating[::1] y):
    """y = max(x, 0) element-wise (NaN passes through, as in np.maximum and torch.relu); y may be x."""
    cdef Py_ssize_t n = x.shape[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            minissd_relu_fwd_f(&x[0], &y[0], n)
        else:
            minissd_relu_fwd_d(&x[0], &y[0], n)


def relu_backward(const floating[::1] y, const floating[::1] dy, floating[::1] dx):
    """dx = dy where y > 0, else 0 (the subgradient 0 at the kink, as in PyTorch)."""
    cdef Py_ssize_t n = y.shape[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            minissd_relu_bwd_f(&y[0], &dy[0], &dx[0], n)
        else:
            minissd_relu_bwd_d(&y[0], &dy[0], &dx[0], n)


def add_chain(long long n):
    """Run 16*n dependent one-cycle integer adds (x86 only); returns 16*n, or -1 where not built for
    x86. Timing it gives the core's clock: benchmarks/_bench.py (measured_clock_ghz)."""
    cdef long long r
    with nogil:
        r = minissd_add_chain(n)
    return r

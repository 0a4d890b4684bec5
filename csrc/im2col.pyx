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
import numpy as np
from libc.string cimport memcpy, memset

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


cdef void _im2col_range(const floating* x, floating* base, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                        Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW, bint rows_first,
                        Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """Jobs [start, end) of `im2col`: x (N, C, H, W) and the column matrix ``base`` as raw pointers."""
    cdef Py_ssize_t OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    cdef Py_ssize_t OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    cdef Py_ssize_t R = C * KH * KW
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t job, n, row, c, kh, kw, oh, ow, ih, iw0, lo, hi
    cdef floating* dst
    cdef const floating* src
    # one job = one (image, row) pair, numbered in memory order of col in either layout, so job j
    # writes the P contiguous values at base + j*P: independent, sequential writes. The indices move
    # by one per job (no divisions in the loop), and what depends on the row only is recomputed
    # when the row changes: once per N jobs in the rows-first layout (small maps spend most of
    # their time on this bookkeeping: 16 values a job on a 4x4 map).
    cdef bint new_row = True
    if start >= end:
        return
    if rows_first:
        row = start // N
        n = start - row * N
    else:
        n = start // R
        row = start - n * R
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
            src = x + ((n * C + c) * H + ih) * W
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


def im2col(const floating[:, :, :, ::1] x, floating[:, :, ::1] col,
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
           Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW, bint rows_first=False,
           Py_ssize_t start=0, Py_ssize_t stop=-1):
    """Fill ``col`` from ``x`` (N, C, H, W).

    ``col`` is (N, C*KH*KW, OH*OW), or (C*KH*KW, N, OH*OW) when ``rows_first`` (the layout in which
    one GEMM ``W2d @ col.reshape(R, N*OH*OW)`` convolves the whole batch).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t end = stop if stop >= 0 else N * C * KH * KW
    with nogil:
        _im2col_range(&x[0, 0, 0, 0], &col[0, 0, 0], N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW,
                      rows_first, start, end)


cdef void _col2im_range(const floating* base, floating* dx, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                        Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW, bint rows_first,
                        Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """Planes [start, end) of `col2im`: the column matrix ``base`` and dx (N, C, H, W) as raw pointers."""
    cdef Py_ssize_t OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    cdef Py_ssize_t OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    cdef Py_ssize_t P = OH * OW, R = C * KH * KW
    cdef Py_ssize_t job, n, c, row, kh, kw, oh, ow, ih, iw0, lo, hi
    cdef const floating* rowp
    cdef floating* dst
    cdef floating* plane
    cdef const floating* src
    for job in range(start, end):
        n = job // C
        c = job - n * C
        plane = dx + job * H * W
        memset(plane, 0, H * W * sizeof(floating))
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
                    dst = plane + ih * W
                    src = rowp + oh * OW
                    if SW == 1:
                        for ow in range(lo, hi):
                            dst[ow + iw0] += src[ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow * SW + iw0] += src[ow]


def col2im(const floating[:, :, ::1] col, floating[:, :, :, ::1] dx,
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
           Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW, bint rows_first=False,
           Py_ssize_t start=0, Py_ssize_t stop=-1):
    """Overwrite ``dx`` (N, C, H, W) with the adjoint of im2col applied to ``col`` (either layout).

    Each (n, c) plane is owned by one iteration, which zeroes it and then adds the KH*KW rows of
    ``col`` that read from it, in a fixed order: no races and a deterministic sum.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t end = stop if stop >= 0 else N * C
    with nogil:
        _col2im_range(&col[0, 0, 0], &dx[0, 0, 0, 0], N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW,
                      rows_first, start, end)


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


# --------------------------------------------------------------------------------------------------
# The fork-join pool: the CPU layers' parallel regions without waking a sleeping thread.
#
# Why (minissd/nn/threads.py has the measurements): a region handed to a Python thread that sleeps
# on a lock costs two wake-ups (the worker's, then the caller's), each 50-150 us on a virtual machine
# whose idle CPU halts; a small layer's forward + backward runs 8 regions. Here the workers are plain
# threads that never take the GIL: after a job each spins (pause instruction) on a sequence number for
# `spin_s` seconds before it sleeps on a condition variable, and the caller spins on the workers'
# "done" numbers the same way, so regions that follow each other closely, as in one layer, hand over
# in a few microseconds. The jobs are C: a GEMM (OpenBLAS's cblas through a function pointer found
# at run time), the im2col/col2im kernels above, and a strided row copy with an optional bias.
# Job i of a region always runs range i of the caller's split, so results are those of the serial
# loop over the same ranges, whichever thread runs them.
# --------------------------------------------------------------------------------------------------
cdef extern from *:
    """
    #include <pthread.h>
    #include <sched.h>
    #include <string.h>
    #include <time.h>
    #define MINISSD_MAXJOBS 64
    typedef void (*minissd_runner_t)(int);
    /* word: region number << 16 | number of jobs << 8 | next unclaimed job. One atomic word, so that a
       claim (compare-and-swap) can only succeed on the region and job table it read. */
    typedef struct {
        long long word;
        int finished;                         /* jobs of the current region finished */
        int nworkers, stop, sleeping, caller_sleeping;
        double spin_s;
        minissd_runner_t runner;
        pthread_mutex_t mu;
        pthread_cond_t work_cv, done_cv;
    } minissd_pool_t;
    static minissd_pool_t minissd_pool;
    static int minissd_pool_busy = 0;        /* one caller at a time; a second runs its jobs serially */

    static inline double minissd_now(void) {
        struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    /* One turn of a spin-wait. The first turns are a pause instruction; later ones give the CPU away
       (sched_yield), because the thread we wait for may have been woken on our CPU: spinning there
       would keep it off until the scheduler's tick (measured: a 4x4 head conv's regions then took
       1 ms each instead of microseconds, in streaks). */
    static inline void minissd_relax(int k) {
        if (k < 64) {
    #if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
    #elif defined(__aarch64__)
            __asm__ __volatile__("yield");
    #endif
        } else {
            sched_yield();
        }
    }
    static void minissd_pool_reset(minissd_runner_t runner, double spin_s) {
        memset(&minissd_pool, 0, sizeof minissd_pool);
        minissd_pool.runner = runner; minissd_pool.spin_s = spin_s;
        pthread_mutex_init(&minissd_pool.mu, NULL);
        pthread_cond_init(&minissd_pool.work_cv, NULL); pthread_cond_init(&minissd_pool.done_cv, NULL);
        __atomic_store_n(&minissd_pool_busy, 0, __ATOMIC_SEQ_CST);
    }
    static inline long long minissd_region(long long w) { return w >> 16; }
    /* Claim and run jobs of region g until none is left (or the caller moved on); returns how many. */
    static int minissd_pool_drain(long long g) {
        minissd_pool_t *P = &minissd_pool;
        int ran = 0;
        for (;;) {
            long long w = __atomic_load_n(&P->word, __ATOMIC_ACQUIRE);
            int next = (int)(w & 255), n = (int)((w >> 8) & 255);
            if (minissd_region(w) != g || next >= n) return ran;
            if (!__atomic_compare_exchange_n(&P->word, &w, w + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
            P->runner(next);
            __atomic_add_fetch(&P->finished, 1, __ATOMIC_SEQ_CST);
            ran++;
        }
    }
    /* A worker: wait for a new region, help with its jobs, repeat until stopped. */
    static void minissd_pool_worker(int i, long long g) {   /* g: the region number when it was started */
        minissd_pool_t *P = &minissd_pool;
        (void)i;
        for (;;) {
            double end = minissd_now() + P->spin_s;
            int k = 0;
            while (minissd_region(__atomic_load_n(&P->word, __ATOMIC_ACQUIRE)) == g) {
                if ((++k & 15) == 0 && minissd_now() > end) {
                    pthread_mutex_lock(&P->mu);
                    __atomic_add_fetch(&P->sleeping, 1, __ATOMIC_SEQ_CST);
                    while (minissd_region(__atomic_load_n(&P->word, __ATOMIC_SEQ_CST)) == g)
                        pthread_cond_wait(&P->work_cv, &P->mu);
                    __atomic_sub_fetch(&P->sleeping, 1, __ATOMIC_SEQ_CST);
                    pthread_mutex_unlock(&P->mu);
                    break;
                }
                minissd_relax(k);
            }
            if (__atomic_load_n(&P->stop, __ATOMIC_ACQUIRE)) return;
            g = minissd_region(__atomic_load_n(&P->word, __ATOMIC_ACQUIRE));
            if (minissd_pool_drain(g) && __atomic_load_n(&P->caller_sleeping, __ATOMIC_SEQ_CST)) {
                pthread_mutex_lock(&P->mu); pthread_cond_broadcast(&P->done_cv); pthread_mutex_unlock(&P->mu);
            }
        }
    }
    /* Run jobs 0..n-1 (1 <= n <= 255; the caller holds minissd_pool_acquire): the caller and the workers
       claim them one at a time, so a worker that is slow to wake costs nothing but its share (the caller
       runs the jobs it has not claimed). Returns when all have finished. */
    static int minissd_pool_run(int n) {
        minissd_pool_t *P = &minissd_pool;
        long long g = minissd_region(P->word) + 1;
        __atomic_store_n(&P->finished, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&P->word, (g << 16) | ((long long)n << 8), __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&P->sleeping, __ATOMIC_SEQ_CST)) {
            pthread_mutex_lock(&P->mu); pthread_cond_broadcast(&P->work_cv); pthread_mutex_unlock(&P->mu);
        }
        minissd_pool_drain(g);
        double end = minissd_now() + P->spin_s;
        int k = 0;
        while (__atomic_load_n(&P->finished, __ATOMIC_ACQUIRE) != n) {
            if ((++k & 15) == 0 && minissd_now() > end) {
                pthread_mutex_lock(&P->mu);
                __atomic_store_n(&P->caller_sleeping, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&P->finished, __ATOMIC_SEQ_CST) != n) pthread_cond_wait(&P->done_cv, &P->mu);
                __atomic_store_n(&P->caller_sleeping, 0, __ATOMIC_SEQ_CST);
                pthread_mutex_unlock(&P->mu);
                break;
            }
            minissd_relax(k);
        }
        return 1;
    }
    static inline int minissd_pool_acquire(void) { return !__atomic_exchange_n(&minissd_pool_busy, 1, __ATOMIC_ACQ_REL); }
    static inline void minissd_pool_release(void) { __atomic_store_n(&minissd_pool_busy, 0, __ATOMIC_RELEASE); }
    static void minissd_pool_stop(void) {
        minissd_pool_t *P = &minissd_pool;
        pthread_mutex_lock(&P->mu);
        __atomic_store_n(&P->stop, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&P->word, 1LL << 16, __ATOMIC_SEQ_CST);
        pthread_cond_broadcast(&P->work_cv);
        pthread_mutex_unlock(&P->mu);
    }
    typedef void (*minissd_sgemm_t)(int, int, int, long long, long long, long long, float, const float*,
                                    long long, const float*, long long, float, float*, long long);
    typedef void (*minissd_dgemm_t)(int, int, int, long long, long long, long long, double, const double*,
                                    long long, const double*, long long, double, double*, long long);
    typedef void (*minissd_sgemm32_t)(int, int, int, int, int, int, float, const float*, int, const float*,
                                      int, float, float*, int);
    typedef void (*minissd_dgemm32_t)(int, int, int, int, int, int, double, const double*, int, const double*,
                                      int, double, double*, int);
    """
    ctypedef void (*minissd_runner_t)(int) noexcept nogil
    ctypedef struct minissd_pool_t:
        int nworkers
        long long word
    minissd_pool_t minissd_pool
    void minissd_pool_reset(minissd_runner_t runner, double spin_s)
    void minissd_pool_worker(int i, long long g) nogil
    int minissd_pool_run(int n) nogil
    int minissd_pool_acquire() nogil
    void minissd_pool_release() nogil
    void minissd_pool_stop()
    ctypedef void (*minissd_sgemm_t)(int, int, int, long long, long long, long long, float, const float*,
                                     long long, const float*, long long, float, float*, long long) noexcept nogil
    ctypedef void (*minissd_dgemm_t)(int, int, int, long long, long long, long long, double, const double*,
                                     long long, const double*, long long, double, double*, long long) noexcept nogil
    ctypedef void (*minissd_sgemm32_t)(int, int, int, int, int, int, float, const float*, int, const float*,
                                       int, float, float*, int) noexcept nogil
    ctypedef void (*minissd_dgemm32_t)(int, int, int, int, int, int, double, const double*, int, const double*,
                                       int, double, double*, int) noexcept nogil

cdef extern from "sgemm.h" nogil:
    int minissd_own_sgemm_supported()
    int minissd_own_sgemm(int ta, int tb, long long M, long long N, long long K, const float* a, long long lda,
                          const float* b, long long ldb, float beta, float* c, long long ldc, int simd)
    int minissd_direct_conv_dw(const float* x, long long C, long long H, long long W, long long KH, long long KW,
                               long long PH, long long PW, const float* dy, long long F, long long OH, long long OW,
                               float* dW_parts, float* db_parts, long long n0, long long n1)
    int minissd_direct_conv_fwd(const float* x, long long C, long long H, long long W, long long KH, long long KW,
                                long long PH, long long PW, const float* w, long long F, const float* bias,
                                float* y, long long OH, long long OW, long long n0, long long n1)

cdef enum:
    MAXJOBS = 64            # at most 255: the pool's word keeps job counts in 8 bits
    JOB_NONE = 0
    JOB_GEMM = 1
    JOB_IM2COL = 2
    JOB_COL2IM = 3
    JOB_ROWS = 4
    JOB_CONV_FWD = 5        # blocks of images of a convolution, forward (Conv2d's blocked path)
    JOB_CONV_BWD = 6        # the same blocks, backward
    JOB_DIRECT_FWD = 7      # a range of images of the direct convolution (csrc/sgemm.h), forward
    JOB_DIRECT_DW = 8       # the same, its weight gradient

ctypedef struct Job:
    int kind
    bint f64
    const void* a
    const void* b
    void* c
    const void* bias
    long long M, N, K, lda, ldb, ldc
    int ta, tb
    double beta
    Py_ssize_t start, stop
    Py_ssize_t g[13]
    # the convolution block jobs: [m images a block, F filters, P output pixels an image, want dx] and
    # their arrays (x, W2d, y or dy, dx, the job's column and (F, m, P) scratch, dW and db parts)
    Py_ssize_t h[4]
    void* p[8]

cdef Job _jobs[MAXJOBS]
cdef int _own = 0                   # float32 GEMMs by minissd_own_sgemm (csrc/sgemm.h), not the BLAS
cdef minissd_sgemm_t _sgemm = NULL
cdef minissd_dgemm_t _dgemm = NULL
cdef minissd_sgemm32_t _sgemm32 = NULL
cdef minissd_dgemm32_t _dgemm32 = NULL


cdef void _rows(Job* j) noexcept nogil:
    """dst[i, f, :] = src[i, f, :] (+ bias[f]) for i in [start, stop), f < g[0], P = g[1] values a row;
    strides in elements: src g[2] (i), g[3] (f); dst g[4] (i), g[5] (f)."""
    cdef Py_ssize_t i, f, p, F = j.g[0], P = j.g[1]
    cdef const float* sf
    cdef float* df
    cdef const double* sd
    cdef double* dd
    cdef float bf
    cdef double bd
    for i in range(j.start, j.stop):
        for f in range(F):
            if j.f64:
                sd = <const double*>j.a + i * j.g[2] + f * j.g[3]
                dd = <double*>j.c + i * j.g[4] + f * j.g[5]
                if j.bias == NULL:
                    memcpy(dd, sd, P * sizeof(double))
                else:
                    bd = (<const double*>j.bias)[f]
                    for p in range(P):
                        dd[p] = sd[p] + bd
            else:
                sf = <const float*>j.a + i * j.g[2] + f * j.g[3]
                df = <float*>j.c + i * j.g[4] + f * j.g[5]
                if j.bias == NULL:
                    memcpy(df, sf, P * sizeof(float))
                else:
                    bf = (<const float*>j.bias)[f]
                    for p in range(P):
                        df[p] = sf[p] + bf


cdef void _run_job(int i) noexcept nogil:
    _do_job(&_jobs[i])


cdef void _gemm_any(bint f64, bint ta_, bint tb_, long long M, long long N, long long K, const void* a,
                    long long lda, const void* b, long long ldb, double beta, void* c, long long ldc) noexcept nogil:
    """C = A @ B + beta C, row-major, A transposed when ta_, B when tb_: the own GEMM (float32, when
    switched on) or the BLAS whose entry points `pool_setup` was given."""
    cdef int ta, tb
    if M <= 0 or N <= 0:
        return
    ta = 112 if ta_ else 111                         # CblasTrans / CblasNoTrans; row major (101)
    tb = 112 if tb_ else 111
    if f64:
        if _dgemm != NULL:
            _dgemm(101, ta, tb, M, N, K, 1.0, <const double*>a, lda, <const double*>b, ldb, beta,
                   <double*>c, ldc)
        else:
            _dgemm32(101, ta, tb, <int>M, <int>N, <int>K, 1.0, <const double*>a, <int>lda,
                     <const double*>b, <int>ldb, beta, <double*>c, <int>ldc)
    else:
        if _own and minissd_own_sgemm(ta_, tb_, M, N, K, <const float*>a, lda, <const float*>b, ldb,
                                      <float>beta, <float*>c, ldc, 1) == 0:
            return
        if _sgemm != NULL:
            _sgemm(101, ta, tb, M, N, K, 1.0, <const float*>a, lda, <const float*>b, ldb, <float>beta,
                   <float*>c, ldc)
        else:
            _sgemm32(101, ta, tb, <int>M, <int>N, <int>K, 1.0, <const float*>a, <int>lda,
                     <const float*>b, <int>ldb, <float>beta, <float*>c, <int>ldc)


cdef void _conv_fwd_blocks(const floating* x, const floating* W, const floating* bias, floating* y,
                           floating* col, floating* yt, Job* j) noexcept nogil:
    """Blocks start..stop-1 of m images: unroll each into this job's columns (R, mm, P), one GEMM
    yt (F, mm*P) = W (F, R) @ col, then y[n0 + i, f, :] = yt[f, i, :] (+ bias[f]); as
    Conv2d._forward_blocks."""
    cdef Py_ssize_t N = j.g[0], C = j.g[1], H = j.g[2], Wd = j.g[3]
    cdef Py_ssize_t m = j.h[0], F = j.h[1], P = j.h[2], R = C * j.g[4] * j.g[5]
    cdef Py_ssize_t blk, n0, mm, i, f, q
    cdef const floating* src
    cdef floating* dst
    cdef floating bf
    for blk in range(j.start, j.stop):
        n0 = blk * m
        mm = min(N, n0 + m) - n0
        _im2col_range(x + n0 * C * H * Wd, col, mm, C, H, Wd, j.g[4], j.g[5], j.g[6], j.g[7], j.g[8], j.g[9],
                      j.g[10], j.g[11], True, 0, mm * R)
        _gemm_any(floating is double, False, False, F, mm * P, R, W, R, col, mm * P, 0.0, yt, mm * P)
        for i in range(mm):
            for f in range(F):
                src = yt + (f * mm + i) * P
                dst = y + ((n0 + i) * F + f) * P
                if bias == NULL:
                    memcpy(dst, src, P * sizeof(floating))
                else:
                    bf = bias[f]
                    for q in range(P):
                        dst[q] = src[q] + bf


cdef void _conv_bwd_blocks(const floating* x, const floating* W, const floating* dy, floating* dx,
                           floating* col, floating* dyt, floating* dW_parts, floating* db_parts,
                           Job* j) noexcept nogil:
    """Backward of blocks start..stop-1, as Conv2d._backward_blocks for one layer: unroll the block
    again, dyt (F, mm, P) from dy, the block's db (row sums, in double) and dW = dyt @ col.T into its
    parts, then (want dx) col = W.T @ dyt and col2im into dx."""
    cdef Py_ssize_t N = j.g[0], C = j.g[1], H = j.g[2], Wd = j.g[3]
    cdef Py_ssize_t m = j.h[0], F = j.h[1], P = j.h[2], R = C * j.g[4] * j.g[5]
    cdef Py_ssize_t blk, n0, mm, i, f, q
    cdef double acc
    cdef const floating* src
    for blk in range(j.start, j.stop):
        n0 = blk * m
        mm = min(N, n0 + m) - n0
        _im2col_range(x + n0 * C * H * Wd, col, mm, C, H, Wd, j.g[4], j.g[5], j.g[6], j.g[7], j.g[8], j.g[9],
                      j.g[10], j.g[11], True, 0, mm * R)
        for f in range(F):
            acc = 0.0
            for i in range(mm):
                src = dy + ((n0 + i) * F + f) * P
                memcpy(dyt + (f * mm + i) * P, src, P * sizeof(floating))
                for q in range(P):
                    acc = acc + src[q]
            db_parts[blk * F + f] = <floating>acc
        _gemm_any(floating is double, False, True, F, R, mm * P, dyt, mm * P, col, mm * P, 0.0,
                  dW_parts + blk * F * R, R)
        if j.h[3]:
            _gemm_any(floating is double, True, False, R, mm * P, F, W, R, dyt, mm * P, 0.0, col, mm * P)
            _col2im_range(col, dx + n0 * C * H * Wd, mm, C, H, Wd, j.g[4], j.g[5], j.g[6], j.g[7], j.g[8],
                          j.g[9], j.g[10], j.g[11], True, 0, mm * C)


cdef void _do_job(Job* j) noexcept nogil:
    if j.kind == JOB_GEMM:
        _gemm_any(j.f64, j.ta, j.tb, j.M, j.N, j.K, j.a, j.lda, j.b, j.ldb, j.beta, j.c, j.ldc)
    elif j.kind == JOB_CONV_FWD:
        if j.f64:
            _conv_fwd_blocks[double](<const double*>j.p[0], <const double*>j.p[1], <const double*>j.bias,
                                     <double*>j.p[2], <double*>j.p[4], <double*>j.p[5], j)
        else:
            _conv_fwd_blocks[float](<const float*>j.p[0], <const float*>j.p[1], <const float*>j.bias,
                                    <float*>j.p[2], <float*>j.p[4], <float*>j.p[5], j)
    elif j.kind == JOB_DIRECT_FWD:
        minissd_direct_conv_fwd(<const float*>j.p[0], j.g[1], j.g[2], j.g[3], j.g[4], j.g[5], j.g[8], j.g[9],
                                <const float*>j.p[1], j.h[1], <const float*>j.bias, <float*>j.p[2], j.h[2],
                                j.h[3], j.start, j.stop)
    elif j.kind == JOB_DIRECT_DW:
        minissd_direct_conv_dw(<const float*>j.p[0], j.g[1], j.g[2], j.g[3], j.g[4], j.g[5], j.g[8], j.g[9],
                               <const float*>j.p[2], j.h[1], j.h[2], j.h[3], <float*>j.p[6], <float*>j.p[7],
                               j.start, j.stop)
    elif j.kind == JOB_CONV_BWD:
        if j.f64:
            _conv_bwd_blocks[double](<const double*>j.p[0], <const double*>j.p[1], <const double*>j.p[2],
                                     <double*>j.p[3], <double*>j.p[4], <double*>j.p[5], <double*>j.p[6],
                                     <double*>j.p[7], j)
        else:
            _conv_bwd_blocks[float](<const float*>j.p[0], <const float*>j.p[1], <const float*>j.p[2],
                                    <float*>j.p[3], <float*>j.p[4], <float*>j.p[5], <float*>j.p[6],
                                    <float*>j.p[7], j)
    elif j.kind == JOB_IM2COL or j.kind == JOB_COL2IM:
        if j.kind == JOB_IM2COL and j.f64:
            _im2col_range[double](<const double*>j.a, <double*>j.c, j.g[0], j.g[1], j.g[2], j.g[3], j.g[4],
                                  j.g[5], j.g[6], j.g[7], j.g[8], j.g[9], j.g[10], j.g[11], j.g[12] != 0,
                                  j.start, j.stop)
        elif j.kind == JOB_IM2COL:
            _im2col_range[float](<const float*>j.a, <float*>j.c, j.g[0], j.g[1], j.g[2], j.g[3], j.g[4],
                                 j.g[5], j.g[6], j.g[7], j.g[8], j.g[9], j.g[10], j.g[11], j.g[12] != 0,
                                 j.start, j.stop)
        elif j.f64:
            _col2im_range[double](<const double*>j.a, <double*>j.c, j.g[0], j.g[1], j.g[2], j.g[3], j.g[4],
                                  j.g[5], j.g[6], j.g[7], j.g[8], j.g[9], j.g[10], j.g[11], j.g[12] != 0,
                                  j.start, j.stop)
        else:
            _col2im_range[float](<const float*>j.a, <float*>j.c, j.g[0], j.g[1], j.g[2], j.g[3], j.g[4],
                                 j.g[5], j.g[6], j.g[7], j.g[8], j.g[9], j.g[10], j.g[11], j.g[12] != 0,
                                 j.start, j.stop)
    elif j.kind == JOB_ROWS:
        _rows(j)


cdef int _nworkers_started = 0


def pool_setup(size_t sgemm, size_t dgemm, bint ilp64, double spin_s):
    """Reset the pool (no workers) with the BLAS entry points at these addresses (cblas_sgemm and
    cblas_dgemm; 64-bit integers when ``ilp64``) and the spin time; call before starting workers."""
    global _sgemm, _dgemm, _sgemm32, _dgemm32
    if ilp64:
        _sgemm, _dgemm, _sgemm32, _dgemm32 = <minissd_sgemm_t>sgemm, <minissd_dgemm_t>dgemm, NULL, NULL
    else:
        _sgemm, _dgemm = NULL, NULL
        _sgemm32, _dgemm32 = <minissd_sgemm32_t>sgemm, <minissd_dgemm32_t>dgemm
    minissd_pool_reset(_run_job, spin_s)


def pool_set_workers(int n):
    """Number of workers running `pool_worker` (the caller starts and stops their threads)."""
    if not 0 <= n < MAXJOBS:
        raise ValueError(f"pool workers: 0..{MAXJOBS - 1}, got {n}")
    minissd_pool.nworkers = n


def pool_seq():
    """The number of the last region started (pass it to `pool_worker`)."""
    return minissd_pool.word >> 16


def pool_worker(int i, long long seq):
    """Body of worker thread i (1-based), started when the last region was number ``seq``: runs job i
    of every later region, without the GIL, until `pool_stop`."""
    with nogil:
        minissd_pool_worker(i, seq)


def pool_stop():
    """Ask every worker to return (the caller joins their threads)."""
    minissd_pool_stop()


cdef void _run_serially(Job* jobs, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        _do_job(&jobs[i])


cdef void _run_region(Job* jobs, int n) noexcept nogil:
    """Run the ``n`` jobs: on the pool when it has the workers and no other thread is using it (the
    jobs are copied into the pool's table), else one after the other here. Same results either way."""
    if n <= 1 or not minissd_pool_acquire():
        _run_serially(jobs, n)
        return
    memcpy(_jobs, jobs, n * sizeof(Job))
    if minissd_pool.nworkers == 0:
        _run_serially(jobs, n)
    else:
        minissd_pool_run(n)
    minissd_pool_release()


cdef int _fill(list bounds) except -1:
    n = len(bounds) - 1
    if not 1 <= n <= MAXJOBS:
        raise ValueError(f"a region takes 1..{MAXJOBS} ranges, got {n}")
    return n


cdef int _as_blas(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t isz,
                  const char* name, long long* ld) except -1:
    """1 when a (rows, cols) matrix with byte strides (s0, s1) is the transpose of a row-major one, 0 when
    it is row-major; its leading dimension goes to ``ld``. ValueError for other layouts."""
    if s1 == isz and s0 % isz == 0 and s0 >= max(cols, 1) * isz:
        ld[0] = s0 // isz
        return 0
    if s0 == isz and s1 % isz == 0 and s1 >= max(rows, 1) * isz:
        ld[0] = s1 // isz
        return 1
    raise ValueError(f"pool_gemm: {name.decode()} must be row-major or a row-major matrix transposed, "
                     f"got strides {(s0, s1)} for shape {(rows, cols)}")


def pool_gemm(const floating[:, :] A, const floating[:, :] B, floating[:, :] C, list bounds,
              bint split_rows=False):
    """C = A @ B, one job per range (a, b) of ``bounds``: C[:, a:b] = A @ B[:, a:b] (columns), or with
    ``split_rows`` C[a:b] = A[a:b] @ B (rows: each thread then reads its share of A instead of all of
    it, which is what a wide A and a narrow B want). A and B may be row-major or transposed row-major
    (a ``.T`` view); C is row-major."""
    cdef Job jobs[MAXJOBS]
    cdef int n = _fill(bounds), t, ta, tb
    cdef Py_ssize_t a, b, isz = sizeof(floating)
    cdef long long lda = 0, ldb = 0, ldc = 0
    if A.shape[1] != B.shape[0] or C.shape[0] != A.shape[0] or C.shape[1] != B.shape[1]:
        raise ValueError(f"pool_gemm: shapes ({A.shape[0]}, {A.shape[1]}) @ ({B.shape[0]}, {B.shape[1]}) -> "
                         f"({C.shape[0]}, {C.shape[1]})")
    ta = _as_blas(A.shape[0], A.shape[1], A.strides[0], A.strides[1], isz, b"A", &lda)
    tb = _as_blas(B.shape[0], B.shape[1], B.strides[0], B.strides[1], isz, b"B", &ldb)
    if _as_blas(C.shape[0], C.shape[1], C.strides[0], C.strides[1], isz, b"C", &ldc):
        raise ValueError("pool_gemm: C must be row-major")
    if bounds[0] != 0 or bounds[n] != C.shape[0 if split_rows else 1]:
        raise ValueError(f"pool_gemm: bounds must run from 0 to the number of {'rows' if split_rows else 'columns'}")
    for t in range(n):
        a, b = bounds[t], bounds[t + 1]
        jobs[t].kind = JOB_GEMM
        jobs[t].f64 = floating is double
        jobs[t].lda, jobs[t].ldb, jobs[t].ldc = lda, ldb, ldc
        jobs[t].ta, jobs[t].tb = ta, tb
        jobs[t].K = A.shape[1]
        jobs[t].beta = 0.0
        if b <= a:                                   # an empty range: nothing to compute or point at
            jobs[t].a, jobs[t].b, jobs[t].c = &A[0, 0], &B[0, 0], &C[0, 0]
            jobs[t].M, jobs[t].N = 0, 0
        elif split_rows:
            jobs[t].a, jobs[t].b, jobs[t].c = &A[a, 0], &B[0, 0], &C[a, 0]
            jobs[t].M, jobs[t].N = b - a, B.shape[1]
        else:
            jobs[t].a, jobs[t].b, jobs[t].c = &A[0, 0], &B[0, a], &C[0, a]
            jobs[t].M, jobs[t].N = A.shape[0], b - a
    with nogil:
        _run_region(jobs, n)


def pool_gemm_parts(const floating[:, :] A, const floating[:, :] B, floating[:, :, :] parts, list bounds):
    """parts[t] = A[:, a:b] @ B[:, a:b].T for each range (a, b) of ``bounds`` (the shared dimension)."""
    cdef Job jobs[MAXJOBS]
    cdef int n = _fill(bounds), t
    cdef Py_ssize_t a, b, isz = sizeof(floating)
    for t in range(n):
        a, b = bounds[t], bounds[t + 1]
        jobs[t].kind = JOB_GEMM
        jobs[t].f64 = floating is double
        jobs[t].a = &A[0, a]
        jobs[t].lda = A.strides[0] // isz
        jobs[t].b = &B[0, a]
        jobs[t].ldb = B.strides[0] // isz
        jobs[t].c = &parts[t, 0, 0]
        jobs[t].ldc = parts.strides[1] // isz
        jobs[t].M, jobs[t].N, jobs[t].K = A.shape[0], B.shape[0], b - a
        jobs[t].ta = False
        jobs[t].tb = True
        jobs[t].beta = 0.0
    with nogil:
        _run_region(jobs, n)


def pool_im2col(const floating[:, :, :, ::1] x, floating[:, :, ::1] col, Py_ssize_t KH, Py_ssize_t KW,
                Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW,
                bint rows_first, list bounds):
    """`im2col`, job ranges from ``bounds``."""
    _geometry_jobs(JOB_IM2COL, floating is double, &x[0, 0, 0, 0], &col[0, 0, 0], x.shape[0], x.shape[1],
                   x.shape[2], x.shape[3], KH, KW, SH, SW, PH, PW, DH, DW, rows_first, bounds)


def pool_col2im(const floating[:, :, ::1] col, floating[:, :, :, ::1] dx, Py_ssize_t KH, Py_ssize_t KW,
                Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW,
                bint rows_first, list bounds):
    """`col2im`, plane ranges from ``bounds``."""
    _geometry_jobs(JOB_COL2IM, floating is double, &col[0, 0, 0], &dx[0, 0, 0, 0], dx.shape[0], dx.shape[1],
                   dx.shape[2], dx.shape[3], KH, KW, SH, SW, PH, PW, DH, DW, rows_first, bounds)


cdef int _geometry_jobs(int kind, bint f64, const void* src, void* dst, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH,
                        Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t DH, Py_ssize_t DW,
                        bint rows_first, list bounds) except -1:
    cdef Job jobs[MAXJOBS]
    cdef int n = _fill(bounds), t
    cdef Py_ssize_t geo[13]
    geo[:] = [N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, rows_first]
    for t in range(n):
        jobs[t].kind = kind
        jobs[t].f64 = f64
        jobs[t].a = src
        jobs[t].c = dst
        jobs[t].start, jobs[t].stop = bounds[t], bounds[t + 1]
        memcpy(jobs[t].g, geo, sizeof(geo))
    with nogil:
        _run_region(jobs, n)
    return 0


def pool_rows(src, dst, bias, Py_ssize_t F, Py_ssize_t P, list bounds):
    """dst[i, f, :P] = src[i, f, :P] (+ bias[f]) for i in the ranges of ``bounds``, f < F: ``src`` and
    ``dst`` are 3-D NumPy arrays (any strides, unit stride along the last axis), ``bias`` None or a
    contiguous (F,) array of their dtype."""
    cdef Job jobs[MAXJOBS]
    cdef int n = _fill(bounds), t
    cdef size_t isz = src.itemsize
    cdef size_t sp = src.__array_interface__["data"][0]
    cdef size_t dp = dst.__array_interface__["data"][0]
    cdef size_t bp = 0 if bias is None else bias.__array_interface__["data"][0]
    ss, ds = src.strides, dst.strides
    for t in range(n):
        jobs[t].kind = JOB_ROWS
        jobs[t].f64 = isz == 8
        jobs[t].a = <const void*>sp
        jobs[t].c = <void*>dp
        jobs[t].bias = <const void*>bp
        jobs[t].start, jobs[t].stop = bounds[t], bounds[t + 1]
        jobs[t].g[0], jobs[t].g[1] = F, P
        jobs[t].g[2], jobs[t].g[3] = ss[0] // isz, ss[1] // isz
        jobs[t].g[4], jobs[t].g[5] = ds[0] // isz, ds[1] // isz
    with nogil:
        _run_region(jobs, n)


# --------------------------------------------------------------------------------------------------
# minissd's own float32 GEMM (csrc/sgemm.h): in the pool's GEMM jobs when switched on, and
# callable on its own; minissd/nn/threads.py decides (set_gemm) and minissd/nn/gemm.py calls it.
# --------------------------------------------------------------------------------------------------
def own_sgemm_supported():
    """True when this build has the AVX-512 GEMM and the CPU runs AVX-512F."""
    return minissd_own_sgemm_supported() == 1


def set_own_sgemm(bint on):
    """Route the pool's float32 GEMM jobs to the own GEMM (True) or the BLAS (False)."""
    global _own
    if on and not own_sgemm_supported():
        raise RuntimeError("the AVX-512 GEMM needs a CPU with AVX-512F (and a gcc/clang x86-64 build)")
    _own = 1 if on else 0


def own_sgemm_enabled():
    return _own == 1


def own_sgemm(const float[:, :] A, const float[:, :] B, float[:, :] C, float beta=0.0, bint simd=True):
    """C = A @ B + beta * C by the own GEMM, in this thread. A and B row-major or transposed row-major
    (a ``.T`` view), C row-major; float32. ``simd`` False runs its portable micro-kernel (any CPU:
    what the tests check the packing with). RuntimeError where it cannot run."""
    cdef int ta, tb, rc
    cdef long long lda = 0, ldb = 0, ldc = 0
    cdef Py_ssize_t isz = sizeof(float)
    if simd and not own_sgemm_supported():
        raise RuntimeError("the AVX-512 GEMM needs a CPU with AVX-512F (and a gcc/clang x86-64 build)")
    if A.shape[1] != B.shape[0] or C.shape[0] != A.shape[0] or C.shape[1] != B.shape[1]:
        raise ValueError(f"own_sgemm: shapes ({A.shape[0]}, {A.shape[1]}) @ ({B.shape[0]}, {B.shape[1]}) -> "
                         f"({C.shape[0]}, {C.shape[1]})")
    if C.shape[0] == 0 or C.shape[1] == 0:
        return
    if A.shape[1] == 0:                               # an empty sum: C = beta C
        for i in range(C.shape[0]):
            for j in range(C.shape[1]):
                C[i, j] = 0.0 if beta == 0.0 else beta * C[i, j]
        return
    ta = _as_blas(A.shape[0], A.shape[1], A.strides[0], A.strides[1], isz, b"A", &lda)
    tb = _as_blas(B.shape[0], B.shape[1], B.strides[0], B.strides[1], isz, b"B", &ldb)
    if _as_blas(C.shape[0], C.shape[1], C.strides[0], C.strides[1], isz, b"C", &ldc):
        raise ValueError("own_sgemm: C must be row-major")
    with nogil:
        rc = minissd_own_sgemm(ta, tb, A.shape[0], B.shape[1], A.shape[1], &A[0, 0] if A.shape[1] else NULL,
                               lda, &B[0, 0] if B.shape[0] else NULL, ldb, beta, &C[0, 0], ldc, simd)
    if rc != 0:
        raise MemoryError("own_sgemm: no memory for the packing buffers")


# --------------------------------------------------------------------------------------------------
# Conv2d's blocked path as C jobs on the fork-join pool (minissd/nn/conv.py, Conv2d._forward_blocks /
# _backward_blocks are the Python twins): one job per range of blocks, each with its own scratch.
# --------------------------------------------------------------------------------------------------
cdef size_t _addr(a):
    return 0 if a is None else <size_t>a.__array_interface__["data"][0]


cdef int _conv_block_jobs(int kind, x, W2d, bias, y, dx, col, scratch, dW_parts, db_parts, tuple geometry,
                          Py_ssize_t m, Py_ssize_t P, list bounds) except -1:
    cdef Job jobs[MAXJOBS]
    cdef int n = _fill(bounds), t, i
    cdef Py_ssize_t geo[12]
    cdef size_t isz = x.itemsize
    cdef Py_ssize_t F = W2d.shape[0]
    cdef size_t cstride = col.strides[0], sstride = scratch.strides[0]
    if len(geometry) != 12:
        raise ValueError("conv block jobs: geometry is (N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW)")
    for i in range(12):
        geo[i] = geometry[i]
    if col.shape[0] < n or scratch.shape[0] < n:
        raise ValueError(f"conv block jobs: scratch for {n} jobs needed, got {col.shape[0]} and {scratch.shape[0]}")
    for arr in (x, W2d, y, col, scratch):
        if arr.dtype != x.dtype or not arr.flags.c_contiguous:
            raise ValueError("conv block jobs: every array must be C-contiguous and of x's dtype")
    for t in range(n):
        jobs[t].kind = kind
        jobs[t].f64 = isz == 8
        jobs[t].start, jobs[t].stop = bounds[t], bounds[t + 1]
        memcpy(jobs[t].g, geo, sizeof(geo))
        jobs[t].h[0], jobs[t].h[1], jobs[t].h[2], jobs[t].h[3] = m, F, P, dx is not None
        jobs[t].bias = <const void*>_addr(bias)
        jobs[t].p[0] = <void*>_addr(x)
        jobs[t].p[1] = <void*>_addr(W2d)
        jobs[t].p[2] = <void*>_addr(y)
        jobs[t].p[3] = <void*>_addr(dx)
        jobs[t].p[4] = <void*>(_addr(col) + <size_t>t * cstride)
        jobs[t].p[5] = <void*>(_addr(scratch) + <size_t>t * sstride)
        jobs[t].p[6] = <void*>_addr(dW_parts)
        jobs[t].p[7] = <void*>_addr(db_parts)
    with nogil:
        _run_region(jobs, n)
    return 0


def pool_conv_forward_blocks(x, W2d, bias, y, col, yt, tuple geometry, Py_ssize_t m, Py_ssize_t P, list bounds):
    """y (N, F, P) of the convolution of x (N, C, H, W) by W2d (F, R) (+ bias (F,) or None), blocks of
    ``m`` images, job t running the blocks of range t of ``bounds`` with scratch ``col[t]`` (R*m*P
    values) and ``yt[t]`` (F*m*P). Every array C-contiguous, one dtype; the caller checks shapes."""
    _conv_block_jobs(JOB_CONV_FWD, x, W2d, bias, y, None, col, yt, None, None, geometry, m, P, bounds)


def pool_conv_backward_blocks(x, W2d, dy, dx, col, dyt, dW_parts, db_parts, tuple geometry, Py_ssize_t m,
                              Py_ssize_t P, list bounds):
    """Backward of `pool_conv_forward_blocks`: dW_parts[blk] (F, R) and db_parts[blk] (F,) of each block
    and, unless ``dx`` is None, dx (N, C, H, W). dy is (N, F, P)."""
    for arr in (dy, dW_parts, db_parts) + (() if dx is None else (dx,)):
        if arr.dtype != x.dtype or not arr.flags.c_contiguous:
            raise ValueError("conv block jobs: every array must be C-contiguous and of x's dtype")
    _conv_block_jobs(JOB_CONV_BWD, x, W2d, None, dy, dx, col, dyt, dW_parts, db_parts, geometry, m, P, bounds)


def pool_direct_conv_forward(const float[:, :, :, ::1] x, const float[:, :, :, ::1] W, bias,
                             float[:, :, :, ::1] y, Py_ssize_t PH, Py_ssize_t PW, list bounds):
    """y (N, F, OH, OW) = the stride-1 convolution of x (N, C, H, W) by W (F, C, KH, KW), padded by
    (PH, PW), plus ``bias`` ((F,) float32 or None), by the direct AVX-512 kernel of csrc/sgemm.h for
    3x3 kernels on at most 3 channels; image ranges from ``bounds``. RuntimeError where it cannot run."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], Wd = x.shape[3]
    cdef Py_ssize_t F = W.shape[0], KH = W.shape[2], KW = W.shape[3]
    cdef Py_ssize_t OH = H + 2 * PH - KH + 1, OW = Wd + 2 * PW - KW + 1
    if W.shape[1] != C:
        raise ValueError(f"pool_direct_conv_forward: weights {(W.shape[0], W.shape[1], KH, KW)} on {C} channels")
    _check_direct("pool_direct_conv_forward", C, KH, KW, PH, PW)
    if (y.shape[0], y.shape[1], y.shape[2], y.shape[3]) != (N, F, OH, OW):
        raise ValueError(f"pool_direct_conv_forward: y must be {(N, F, OH, OW)}, got "
                         f"{(y.shape[0], y.shape[1], y.shape[2], y.shape[3])}")
    if bias is not None and (bias.dtype != np.float32 or bias.shape != (F,) or not bias.flags.c_contiguous):
        raise ValueError("pool_direct_conv_forward: bias must be a contiguous float32 (F,) array or None")
    if N == 0 or F == 0 or OH <= 0 or OW <= 0:
        return
    _direct_region(JOB_DIRECT_FWD, &x[0, 0, 0, 0], C, H, Wd, PH, PW, F, OH, OW, &W[0, 0, 0, 0], &y[0, 0, 0, 0],
                   NULL, NULL, <const void*>_addr(bias), bounds)


def pool_direct_conv_dw(const float[:, :, :, ::1] x, Py_ssize_t KH, Py_ssize_t KW, const float[:, :, :, ::1] dy,
                        float[:, :, ::1] dW_parts, float[:, ::1] db_parts, Py_ssize_t PH, Py_ssize_t PW,
                        list bounds):
    """The weight gradient of `pool_direct_conv_forward`: dW_parts[n] (F, C*KH*KW) and db_parts[n] (F,)
    of each image n of x (N, C, H, W) for dy (N, F, OH, OW), 3x3 kernels on at most 3 channels, image
    ranges from ``bounds``."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], Wd = x.shape[3], F = dy.shape[1]
    cdef Py_ssize_t OH = H + 2 * PH - KH + 1, OW = Wd + 2 * PW - KW + 1
    _check_direct("pool_direct_conv_dw", C, KH, KW, PH, PW)
    if (dy.shape[0], dy.shape[2], dy.shape[3]) != (N, OH, OW):
        raise ValueError(f"pool_direct_conv_dw: dy must be {(N, F, OH, OW)}, got "
                         f"{(dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3])}")
    if (dW_parts.shape[0], dW_parts.shape[1], dW_parts.shape[2]) != (N, F, C * KH * KW) or \
            (db_parts.shape[0], db_parts.shape[1]) != (N, F):
        raise ValueError("pool_direct_conv_dw: dW_parts must be (N, F, C*KH*KW) and db_parts (N, F)")
    if N == 0 or F == 0:
        return
    _direct_region(JOB_DIRECT_DW, &x[0, 0, 0, 0], C, H, Wd, PH, PW, F, OH, OW, NULL, &dy[0, 0, 0, 0],
                   &dW_parts[0, 0, 0], &db_parts[0, 0], NULL, bounds)


cdef int _check_direct(str name, Py_ssize_t C, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t PH,
                       Py_ssize_t PW) except -1:
    """What both direct kernels need: an AVX-512F CPU, a 3x3 kernel on at most 3 channels, padding >= 0."""
    if not own_sgemm_supported():
        raise RuntimeError("the direct convolution needs a CPU with AVX-512F")
    if (KH, KW) != (3, 3) or C > 3 or PH < 0 or PW < 0:
        raise ValueError(f"{name}: a {KH}x{KW} kernel on {C} channels, padding {(PH, PW)} (a 3x3 kernel on at "
                         f"most 3 channels)")
    return 0


cdef int _direct_region(int kind, const float* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t Wd, Py_ssize_t PH,
                        Py_ssize_t PW, Py_ssize_t F, Py_ssize_t OH, Py_ssize_t OW, const float* w, const float* y,
                        float* dW_parts, float* db_parts, const void* bias, list bounds) except -1:
    """One job of ``kind`` (JOB_DIRECT_FWD: w -> y; JOB_DIRECT_DW: y is dy -> the parts) per image range."""
    cdef Job jobs[MAXJOBS]
    cdef int n = _fill(bounds), t
    for t in range(n):
        jobs[t].kind = kind
        jobs[t].f64 = False
        jobs[t].start, jobs[t].stop = bounds[t], bounds[t + 1]
        jobs[t].g[1], jobs[t].g[2], jobs[t].g[3], jobs[t].g[4], jobs[t].g[5] = C, H, Wd, 3, 3
        jobs[t].g[8], jobs[t].g[9] = PH, PW
        jobs[t].h[1], jobs[t].h[2], jobs[t].h[3] = F, OH, OW
        jobs[t].p[0] = <void*>x
        jobs[t].p[1] = <void*>w
        jobs[t].p[2] = <void*>y
        jobs[t].p[6] = <void*>dW_parts
        jobs[t].p[7] = <void*>db_parts
        jobs[t].bias = bias
    with nogil:
        _run_region(jobs, n)
    return 0

/* minissd's own float32 GEMM for x86 CPUs with AVX-512F: C = A @ B + beta * C, row-major.
 *
 * Why it exists: numpy's OpenBLAS runs its Haswell (AVX2) kernels in this project's environment
 * (OPENBLAS_CORETYPE=Haswell, which tests and CI keep), so on a core with full-width AVX-512 pipes
 * (Zen 5, Intel server cores) it can reach only half of the core's float32 peak, while PyTorch's
 * oneDNN runs AVX-512. The plain twin is that BLAS call (cblas_sgemm through the fork-join pool, or
 * numpy.matmul); tests/test_sgemm.py checks this kernel against it.
 *
 * How (the GotoBLAS/BLIS scheme, written from the published description): C is computed in tiles of
 * MR x NR = 8 x 48 by a micro-kernel that keeps the tile in 24 zmm registers and, for each k, loads one
 * row of 48 values of B (3 vectors), broadcasts each of the 8 values of A's column and does 24 FMAs.
 * A and B are first copied ("packed") into the order the micro-kernel reads them, KC values of k at a
 * time: B in panels of NR columns (KC x NR = 36 KB, which stays in the 48 KB L1 cache while the
 * micro-kernel walks down the rows of C), A in panels of MR rows (from the L2 cache). Packing also
 * handles transposed operands and pads the edges with zeros, so the micro-kernel has no edge cases but
 * the masked stores of the last columns.
 *
 * Determinism: each C element is the sum over k in increasing order (KC at a time, FMA by FMA), the
 * same whichever part of C a call computes, so splitting C's rows or columns across threads gives the
 * bits of one call. Float32 only; float64 (the gradient checks) stays with the BLAS.
 */
#ifndef MINISSD_SGEMM_H
#define MINISSD_SGEMM_H

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define MINISSD_OWN_SGEMM 1
#include <immintrin.h>
#else
#define MINISSD_OWN_SGEMM 0
#endif

#define MS_MR 8
#define MS_NR 48
#ifndef MS_KC                /* -DMS_KC=... to try other block sizes (benchmarks/gemm.py) */
#define MS_KC 192
#endif
#ifndef MS_MC
#define MS_MC 256            /* a multiple of MS_MR */
#endif
#ifndef MS_NC
#define MS_NC 3072           /* a multiple of MS_NR */
#endif

/* 1 when this CPU (and its OS) runs AVX-512F, else 0. */
static int minissd_own_sgemm_supported(void) {
#if MINISSD_OWN_SGEMM
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

/* Each thread's packing buffers (A block MC x KC, B block KC x NC: 2.5 MB), made on its first call and
   freed when the thread ends. */
static pthread_key_t ms_key;
static pthread_once_t ms_once = PTHREAD_ONCE_INIT;
static void ms_free(void *p) { free(p); }
static void ms_make_key(void) { (void)pthread_key_create(&ms_key, ms_free); }
static float *ms_workspace(void) {
    float *w;
    (void)pthread_once(&ms_once, ms_make_key);
    w = (float *)pthread_getspecific(ms_key);
    if (w == NULL) {
        w = (float *)aligned_alloc(64, (size_t)(MS_MC * MS_KC + MS_KC * MS_NC) * sizeof(float));
        if (w != NULL && pthread_setspecific(ms_key, w) != 0) { free(w); w = NULL; }
    }
    return w;
}

/* d[k*width + r] = s[r*ld + k] for the first ``used`` rows r of s, zero for the rest of the width,
   k < kc: ``width`` source rows interleaved value by value (a transpose into a panel). */
static void ms_interleave(float *d, long long width, long long used, const float *s, long long ld, long long kc) {
    for (long long r = 0; r < width; ++r) {
        if (r < used) {
            for (long long k = 0; k < kc; ++k) d[k * width + r] = s[r * ld + k];
        } else {
            for (long long k = 0; k < kc; ++k) d[k * width + r] = 0.0f;
        }
    }
}

/* A(i, k) for i in [i0, i0+mc), k in [k0, k0+kc) into panels of MS_MR rows: panel p holds
   dst[p*kc*MR + k*MR + r] = A(i0 + p*MR + r, k0 + k), zero for rows past mc. A(i, k) is a[i*lda + k],
   or a[k*lda + i] when ta. */
static void ms_pack_a(const float *a, long long lda, int ta, long long i0, long long mc, long long k0,
                      long long kc, float *dst) {
    for (long long p = 0; p < mc; p += MS_MR) {
        const long long rows = mc - p < MS_MR ? mc - p : MS_MR;
        float *d = dst + p * kc;
        if (ta) {
            for (long long k = 0; k < kc; ++k) {
                const float *s = a + (k0 + k) * lda + i0 + p;
                long long r = 0;
                for (; r < rows; ++r) d[k * MS_MR + r] = s[r];
                for (; r < MS_MR; ++r) d[k * MS_MR + r] = 0.0f;
            }
        } else {
            ms_interleave(d, MS_MR, rows, a + (i0 + p) * lda + k0, lda, kc);
        }
    }
}

/* B(k, j) for k in [k0, k0+kc), j in [j0, j0+nc) into panels of MS_NR columns: panel q holds
   dst[q*kc*NR + k*NR + c] = B(k0 + k, j0 + q*NR + c), zero for columns past nc. B(k, j) is
   b[k*ldb + j], or b[j*ldb + k] when tb. */
static void ms_pack_b(const float *b, long long ldb, int tb, long long k0, long long kc, long long j0,
                      long long nc, float *dst) {
    for (long long q = 0; q < nc; q += MS_NR) {
        const long long cols = nc - q < MS_NR ? nc - q : MS_NR;
        float *d = dst + q * kc;
        if (!tb) {
            for (long long k = 0; k < kc; ++k) {
                const float *s = b + (k0 + k) * ldb + j0 + q;
                memcpy(d + k * MS_NR, s, (size_t)cols * sizeof(float));
                if (cols < MS_NR) memset(d + k * MS_NR + cols, 0, (size_t)(MS_NR - cols) * sizeof(float));
            }
        } else {
            ms_interleave(d, MS_NR, cols, b + (j0 + q) * ldb + k0, ldb, kc);
        }
    }
}

/* The portable micro-kernel (plain C, the same packed panels and tile as the AVX-512 one below): what
   runs where AVX-512 cannot, so that the packing and blocking are tested on every machine. */
static void ms_kernel_c(long long kc, const float *ap, const float *bp, float *c, long long ldc,
                        long long rows, long long cols, int mode, float beta) {
    float acc[MS_MR][MS_NR];
    memset(acc, 0, sizeof acc);
    for (long long k = 0; k < kc; ++k, ap += MS_MR, bp += MS_NR)
        for (int r = 0; r < MS_MR; ++r) {
            const float av = ap[r];
            for (int j = 0; j < MS_NR; ++j) acc[r][j] += av * bp[j];
        }
    for (long long r = 0; r < rows; ++r) {
        float *cr = c + r * ldc;
        for (long long j = 0; j < cols; ++j)
            cr[j] = mode == 0 ? acc[r][j] : (mode == 1 ? cr[j] + acc[r][j] : beta * cr[j] + acc[r][j]);
    }
}

#if MINISSD_OWN_SGEMM
static inline __mmask16 ms_mask(long long n) {   /* the first n (clipped to 0..16) lanes */
    return n >= 16 ? (__mmask16)0xFFFF : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u));
}

/* The micro-kernel: the MR x NR tile C[0:rows, 0:cols] (row stride ldc) from kc steps of the packed
   panels ap (kc x MR) and bp (kc x NR). mode 0: C = AB; 1: C += AB; 2: C = beta C + AB. */
#define MS_ROW_FMA(r)                                                                            \
    { const __m512 av = _mm512_set1_ps(ap[r]);                                                   \
      c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0); c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1);   \
      c##r##2 = _mm512_fmadd_ps(av, b2, c##r##2); }
#define MS_ROW_STORE(r)                                                                          \
    if (r < rows) {                                                                              \
        float *cr = c + (r) * ldc;                                                               \
        __m512 v0 = c##r##0, v1 = c##r##1, v2 = c##r##2;                                         \
        if (mode == 1) {                                                                         \
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));                               \
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));                          \
            v2 = _mm512_add_ps(v2, _mm512_maskz_loadu_ps(m2, cr + 32));                          \
        } else if (mode == 2) {                                                                  \
            v0 = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m0, cr), v0);                         \
            v1 = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m1, cr + 16), v1);                    \
            v2 = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(m2, cr + 32), v2);                    \
        }                                                                                        \
        _mm512_mask_storeu_ps(cr, m0, v0);                                                       \
        _mm512_mask_storeu_ps(cr + 16, m1, v1);                                                  \
        _mm512_mask_storeu_ps(cr + 32, m2, v2);                                                  \
    }

__attribute__((target("avx512f")))
static void ms_kernel(long long kc, const float *ap, const float *bp, float *c, long long ldc,
                      long long rows, long long cols, int mode, float beta) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    __m512 c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    __m512 c40 = c00, c41 = c00, c42 = c00, c50 = c00, c51 = c00, c52 = c00;
    __m512 c60 = c00, c61 = c00, c62 = c00, c70 = c00, c71 = c00, c72 = c00;
    for (long long k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16), b2 = _mm512_load_ps(bp + 32);
        MS_ROW_FMA(0) MS_ROW_FMA(1) MS_ROW_FMA(2) MS_ROW_FMA(3)
        MS_ROW_FMA(4) MS_ROW_FMA(5) MS_ROW_FMA(6) MS_ROW_FMA(7)
        ap += MS_MR;
        bp += MS_NR;
    }
    {
        const __mmask16 m0 = ms_mask(cols), m1 = ms_mask(cols - 16), m2 = ms_mask(cols - 32);
        const __m512 bv = _mm512_set1_ps(beta);
        (void)bv;
        MS_ROW_STORE(0) MS_ROW_STORE(1) MS_ROW_STORE(2) MS_ROW_STORE(3)
        MS_ROW_STORE(4) MS_ROW_STORE(5) MS_ROW_STORE(6) MS_ROW_STORE(7)
    }
}
#undef MS_ROW_FMA
#undef MS_ROW_STORE

/* r[0..15] (16 rows of 16) transposed in registers: afterwards r[i] holds what was column i. Three
   rounds of shuffles: 2x2 blocks of single values (unpack), of pairs (shuffle_ps), then of 4x4 blocks
   (shuffle_f32x4, twice). */
__attribute__((target("avx512f")))
static inline void ms_transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}

/* ms_pack_a and ms_pack_b for the operands whose packing is a transpose (A row-major, B given as
   B.T row-major: the weight gradient's dY and columns), 16 x 16 blocks at a time through registers;
   the edges (fewer than 16 values of k, a partial panel) by the scalar loops. Same layout. */
__attribute__((target("avx512f")))
static void ms_pack_a_simd(const float *a, long long lda, int ta, long long i0, long long mc, long long k0,
                           long long kc, float *dst) {
    const long long kv = ta ? 0 : kc - kc % 16;        /* k values done 16 at a time */
    if (kv == 0) { ms_pack_a(a, lda, ta, i0, mc, k0, kc, dst); return; }
    for (long long p = 0; p < mc; p += MS_MR) {
        const long long rows = mc - p < MS_MR ? mc - p : MS_MR;
        float *d = dst + p * kc;
        if (rows < MS_MR) { ms_pack_a(a, lda, ta, i0 + p, rows, k0, kc, d); continue; }
        for (long long k = 0; k < kv; k += 16) {
            __m512 r[16];
            for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_ps(a + (i0 + p + i) * lda + k0 + k);
            for (int i = 8; i < 16; ++i) r[i] = _mm512_setzero_ps();
            ms_transpose16(r);
            for (int i = 0; i < 16; ++i) _mm256_storeu_ps(d + (k + i) * MS_MR, _mm512_castps512_ps256(r[i]));
        }
        for (long long k = kv; k < kc; ++k)
            for (long long i = 0; i < MS_MR; ++i) d[k * MS_MR + i] = a[(i0 + p + i) * lda + k0 + k];
    }
}

__attribute__((target("avx512f")))
static void ms_pack_b_simd(const float *b, long long ldb, int tb, long long k0, long long kc, long long j0,
                           long long nc, float *dst) {
    const long long kv = tb ? kc - kc % 16 : 0;
    if (!tb) {                                         /* rows of 48 (the last panel masked, zero-padded) */
        for (long long q = 0; q < nc; q += MS_NR) {
            const long long cols = nc - q < MS_NR ? nc - q : MS_NR;
            const __mmask16 m0 = ms_mask(cols), m1 = ms_mask(cols - 16), m2 = ms_mask(cols - 32);
            float *d = dst + q * kc;
            const float *s = b + k0 * ldb + j0 + q;
            if (cols == MS_NR) {
                for (long long k = 0; k < kc; ++k, s += ldb, d += MS_NR) {
                    const __m512 v0 = _mm512_loadu_ps(s), v1 = _mm512_loadu_ps(s + 16), v2 = _mm512_loadu_ps(s + 32);
                    _mm512_store_ps(d, v0);
                    _mm512_store_ps(d + 16, v1);
                    _mm512_store_ps(d + 32, v2);
                }
            } else {
                for (long long k = 0; k < kc; ++k, s += ldb, d += MS_NR) {
                    _mm512_store_ps(d, _mm512_maskz_loadu_ps(m0, s));
                    _mm512_store_ps(d + 16, _mm512_maskz_loadu_ps(m1, s + 16));
                    _mm512_store_ps(d + 32, _mm512_maskz_loadu_ps(m2, s + 32));
                }
            }
        }
        return;
    }
    if (kv == 0) { ms_pack_b(b, ldb, tb, k0, kc, j0, nc, dst); return; }
    for (long long q = 0; q < nc; q += MS_NR) {
        const long long cols = nc - q < MS_NR ? nc - q : MS_NR;
        float *d = dst + q * kc;
        if (cols < MS_NR) { ms_pack_b(b, ldb, tb, k0, kc, j0 + q, cols, d); continue; }
        for (long long c0 = 0; c0 < MS_NR; c0 += 16) {
            for (long long k = 0; k < kv; k += 16) {
                __m512 r[16];
                for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(b + (j0 + q + c0 + i) * ldb + k0 + k);
                ms_transpose16(r);
                for (int i = 0; i < 16; ++i) _mm512_storeu_ps(d + (k + i) * MS_NR + c0, r[i]);
            }
            for (long long k = kv; k < kc; ++k)
                for (long long c = c0; c < c0 + 16; ++c) d[k * MS_NR + c] = b[(j0 + q + c) * ldb + k0 + k];
        }
    }
}

/* A direct 3x3 convolution for layers with at most three input channels (an RGB image's first layer),
   stride 1, no dilation, float32: y[n, f, oh, ow] = bias[f] + sum over c, kh, kw of
   w[f, c, kh, kw] * x[n, c, oh + kh - PH, ow + kw - PW] (zero outside the image), for images n0..n1-1.
   im2col would write 27 values per output pixel for a GEMM with K = 27; here 16 output pixels of a
   row sit in one register per filter (16 filters at a time, 16 named registers: written out so that
   the compiler keeps them there), and each tap is one (masked) load of 16 input values and one FMA
   per filter. */
#define MS_F16(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11) OP(12) OP(13) OP(14) OP(15)
/* lanes i of an output strip starting at ow0 whose input column ow0 + i + kw - PW lies inside [0, W) */
static inline __mmask16 ms_in_row(__mmask16 out_mask, long long iw0, long long W) {
    return out_mask & (__mmask16)(ms_mask(W - iw0) & ~ms_mask(iw0 < 0 ? -iw0 : 0));
}

__attribute__((target("avx512f")))
static void ms_direct3_fwd(const float *x, long long C, long long H, long long W, long long PH, long long PW,
                           const float *w, long long F, const float *bias, float *y, long long OH, long long OW,
                           long long n0, long long n1) {
    const long long R = C * 9;
    float wg[16 * 27];                       /* this group's weights, zero rows past F */
    for (long long f0 = 0; f0 < F; f0 += 16) {
        const long long nf = F - f0 < 16 ? F - f0 : 16;
        float bg[16];
        for (long long f = 0; f < 16; ++f) {
            bg[f] = f < nf && bias != NULL ? bias[f0 + f] : 0.0f;
            for (long long r = 0; r < R; ++r) wg[f * 27 + r] = f < nf ? w[(f0 + f) * R + r] : 0.0f;
        }
        for (long long n = n0; n < n1; ++n) {
            for (long long oh = 0; oh < OH; ++oh) {
                for (long long ow0 = 0; ow0 < OW; ow0 += 16) {
                    const __mmask16 out_mask = ms_mask(OW - ow0);
#define MS_INIT(f) __m512 a##f = _mm512_set1_ps(bg[f]);
                    MS_F16(MS_INIT)
#undef MS_INIT
                    for (long long c = 0; c < C; ++c) {
                        for (long long kh = 0; kh < 3; ++kh) {
                            const long long ih = oh + kh - PH;
                            if (ih < 0 || ih >= H) continue;
                            const float *row = x + ((n * C + c) * H + ih) * W;
                            for (long long kw = 0; kw < 3; ++kw) {
                                const long long iw0 = ow0 + kw - PW;
                                const __m512 xv = _mm512_maskz_loadu_ps(ms_in_row(out_mask, iw0, W), row + iw0);
                                const float *wt = wg + c * 9 + kh * 3 + kw;
#define MS_FMA(f) a##f = _mm512_fmadd_ps(_mm512_set1_ps(wt[(f) * 27]), xv, a##f);
                                MS_F16(MS_FMA)
#undef MS_FMA
                            }
                        }
                    }
                    float *out = y + ((n * F + f0) * OH + oh) * OW + ow0;
#define MS_STORE(f) if ((f) < nf) _mm512_mask_storeu_ps(out + (f) * OH * OW, out_mask, a##f);
                    MS_F16(MS_STORE)
#undef MS_STORE
                }
            }
        }
    }
}

/* Its weight gradient, for layers whose dL/dx is not wanted (the image's layer): for each image n in
   n0..n1-1, dW_parts[n, f, c*9 + kh*3 + kw] = sum over oh, ow of dy[n, f, oh, ow] *
   x[n, c, oh + kh - PH, ow + kw - PW] and db_parts[n, f] = sum of dy[n, f]. One part per image, so
   that the caller adds them in image order whatever the threads. Two filters at a time: 2 x 9 named
   accumulators of 16 output columns; each step loads 16 values of dy per filter and, per tap, 16
   shifted input values. */
__attribute__((target("avx512f")))
static void ms_direct3_dw(const float *x, long long C, long long H, long long W, long long PH, long long PW,
                          const float *dy, long long F, long long OH, long long OW, float *dW_parts, float *db_parts,
                          long long n0, long long n1) {
    const long long R = C * 9;
    for (long long n = n0; n < n1; ++n) {
        for (long long f = 0; f < F; f += 2) {
            const int two = f + 1 < F;
            const float *d0row = dy + (n * F + f) * OH * OW;
            const float *d1row = two ? d0row + OH * OW : d0row;
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
            for (long long c = 0; c < C; ++c) {
#define MS_T9(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8)
#define MS_ZERO(t) __m512 p##t = _mm512_setzero_ps(), q##t = _mm512_setzero_ps();
                MS_T9(MS_ZERO)
#undef MS_ZERO
                for (long long oh = 0; oh < OH; ++oh) {
                    const long long ih0 = oh - PH;
                    const float *r0 = x + ((n * C + c) * H + ih0) * W, *r1 = r0 + W, *r2 = r1 + W;
                    const int ok0 = ih0 >= 0 && ih0 < H, ok1 = ih0 + 1 >= 0 && ih0 + 1 < H;
                    const int ok2 = ih0 + 2 >= 0 && ih0 + 2 < H;
                    for (long long ow0 = 0; ow0 < OW; ow0 += 16) {
                        const __mmask16 out_mask = ms_mask(OW - ow0);
                        const __m512 d0 = _mm512_maskz_loadu_ps(out_mask, d0row + oh * OW + ow0);
                        const __m512 d1 = _mm512_maskz_loadu_ps(out_mask, d1row + oh * OW + ow0);
                        if (c == 0) { s0 = _mm512_add_ps(s0, d0); s1 = _mm512_add_ps(s1, d1); }
#define MS_TAP(t, rowp, ok, kw)                                                                      \
                        if (ok) {                                                                    \
                            const long long iw0 = ow0 + (kw) - PW;                                   \
                            const __m512 xv = _mm512_maskz_loadu_ps(ms_in_row(out_mask, iw0, W), rowp + iw0); \
                            p##t = _mm512_fmadd_ps(d0, xv, p##t);                                    \
                            q##t = _mm512_fmadd_ps(d1, xv, q##t);                                    \
                        }
                        MS_TAP(0, r0, ok0, 0) MS_TAP(1, r0, ok0, 1) MS_TAP(2, r0, ok0, 2)
                        MS_TAP(3, r1, ok1, 0) MS_TAP(4, r1, ok1, 1) MS_TAP(5, r1, ok1, 2)
                        MS_TAP(6, r2, ok2, 0) MS_TAP(7, r2, ok2, 1) MS_TAP(8, r2, ok2, 2)
#undef MS_TAP
                    }
                }
#define MS_OUT(t)                                                                                    \
                dW_parts[(n * F + f) * R + c * 9 + (t)] = _mm512_reduce_add_ps(p##t);                \
                if (two) dW_parts[(n * F + f + 1) * R + c * 9 + (t)] = _mm512_reduce_add_ps(q##t);
                MS_T9(MS_OUT)
#undef MS_OUT
#undef MS_T9
            }
            db_parts[n * F + f] = _mm512_reduce_add_ps(s0);
            if (two) db_parts[n * F + f + 1] = _mm512_reduce_add_ps(s1);
        }
    }
}
#undef MS_F16
#endif  /* MINISSD_OWN_SGEMM */

/* The two kernels above for 3x3 kernels on at most 3 channels; -1 where this build has no AVX-512 or the
   layer is not of that kind. */
static int minissd_direct_conv_fwd(const float *x, long long C, long long H, long long W, long long KH,
                                   long long KW, long long PH, long long PW, const float *w, long long F,
                                   const float *bias, float *y, long long OH, long long OW, long long n0,
                                   long long n1) {
#if MINISSD_OWN_SGEMM
    if (KH != 3 || KW != 3 || C > 3) return -1;
    ms_direct3_fwd(x, C, H, W, PH, PW, w, F, bias, y, OH, OW, n0, n1);
    return 0;
#else
    (void)x; (void)C; (void)H; (void)W; (void)KH; (void)KW; (void)PH; (void)PW; (void)w; (void)F; (void)bias;
    (void)y; (void)OH; (void)OW; (void)n0; (void)n1;
    return -1;
#endif
}

static int minissd_direct_conv_dw(const float *x, long long C, long long H, long long W, long long KH, long long KW,
                                  long long PH, long long PW, const float *dy, long long F, long long OH,
                                  long long OW, float *dW_parts, float *db_parts, long long n0, long long n1) {
#if MINISSD_OWN_SGEMM
    if (KH != 3 || KW != 3 || C > 3) return -1;
    ms_direct3_dw(x, C, H, W, PH, PW, dy, F, OH, OW, dW_parts, db_parts, n0, n1);
    return 0;
#else
    (void)x; (void)C; (void)H; (void)W; (void)KH; (void)KW; (void)PH; (void)PW; (void)dy; (void)F; (void)OH;
    (void)OW; (void)dW_parts; (void)db_parts; (void)n0; (void)n1;
    return -1;
#endif
}

typedef void (*ms_kernel_t)(long long, const float *, const float *, float *, long long, long long, long long,
                            int, float);
typedef void (*ms_pack_t)(const float *, long long, int, long long, long long, long long, long long, float *);

/* C (M x N, row stride ldc) = A (M x K) @ B (K x N) + beta * C; A(i, k) = a[i*lda + k] (a[k*lda + i]
   when ta), B(k, j) = b[k*ldb + j] (b[j*ldb + k] when tb). simd 1: the AVX-512 micro-kernel (the
   caller checks minissd_own_sgemm_supported), 0: the portable one. Returns 0, or -1 where it cannot
   run (simd asked of a build without it, or no memory for the packing buffers): the caller then uses
   the BLAS. */
static int minissd_own_sgemm(int ta, int tb, long long M, long long N, long long K, const float *a,
                             long long lda, const float *b, long long ldb, float beta, float *c,
                             long long ldc, int simd) {
    float *w, *abuf, *bbuf;
    ms_kernel_t kernel = ms_kernel_c;
    ms_pack_t pack_a = ms_pack_a, pack_b = ms_pack_b;
    if (simd) {
#if MINISSD_OWN_SGEMM
        kernel = ms_kernel;
        pack_a = ms_pack_a_simd;
        pack_b = ms_pack_b_simd;
#else
        return -1;
#endif
    }
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {                                   /* C = beta C */
        for (long long i = 0; i < M; ++i)
            for (long long j = 0; j < N; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
        return 0;
    }
    w = ms_workspace();
    if (w == NULL) return -1;
    abuf = w;
    bbuf = w + MS_MC * MS_KC;
    for (long long jc = 0; jc < N; jc += MS_NC) {
        const long long nc = N - jc < MS_NC ? N - jc : MS_NC;
        for (long long pc = 0; pc < K; pc += MS_KC) {
            const long long kc = K - pc < MS_KC ? K - pc : MS_KC;
            const int mode = pc > 0 ? 1 : (beta == 0.0f ? 0 : (beta == 1.0f ? 1 : 2));
            pack_b(b, ldb, tb, pc, kc, jc, nc, bbuf);
            for (long long ic = 0; ic < M; ic += MS_MC) {
                const long long mc = M - ic < MS_MC ? M - ic : MS_MC;
                pack_a(a, lda, ta, ic, mc, pc, kc, abuf);
                for (long long jr = 0; jr < nc; jr += MS_NR) {
                    const long long cols = nc - jr < MS_NR ? nc - jr : MS_NR;
                    for (long long ir = 0; ir < mc; ir += MS_MR) {
                        const long long rows = mc - ir < MS_MR ? mc - ir : MS_MR;
                        kernel(kc, abuf + ir * kc, bbuf + jr * kc, c + (ic + ir) * ldc + jc + jr, ldc,
                               rows, cols, mode, beta);
                    }
                }
            }
        }
    }
    return 0;
}

#endif  /* MINISSD_SGEMM_H */

"""Greedy NMS on the GPU: a CuPy RawKernel computes the suppression bitmask, the host walks it.

The bitmask scheme is the one of ChainerCV and torchvision: boxes sorted by descending score are cut
into blocks of 64; thread t of block (row, col) sets bit k of word ``mask[64 row + t, col]`` when box
64 row + t overlaps the later box 64 col + k with IoU > threshold. The O(K^2) IoU work runs in parallel;
the sequential greedy walk over the K x ceil(K / 64) words runs on the host (box_kernels.nms_reduce_bitmask).

The sort runs on the host (stable NumPy argsort of a copy of the scores) and the kernel computes IoU in
float64 with explicitly rounded operations (__dmul_rn, __dadd_rn, ...; no fused multiply-add), the same
operations in the same order as the CPU kernel, so the GPU keeps exactly the CPU's boxes, ties included.

`nms_bitmask_ref` is the NumPy twin of the CUDA kernel, so the mask layout and the host walk are tested on
machines without a GPU.
"""
from __future__ import annotations

import numpy as np

from .._ext import load_extension
from ..backend import cupy_module

_SOURCE = r"""
__device__ __forceinline__ double iou_rn(double ax1, double ay1, double ax2, double ay2, double aa,
                                          double bx1, double by1, double bx2, double by2, double ba) {
    double iw = __dsub_rn(fmin(ax2, bx2), fmax(ax1, bx1));
    if (iw <= 0.0) return 0.0;
    double ih = __dsub_rn(fmin(ay2, by2), fmax(ay1, by1));
    if (ih <= 0.0) return 0.0;
    double inter = __dmul_rn(iw, ih);
    double uni = __dsub_rn(__dadd_rn(aa, ba), inter);
    if (uni <= 0.0) return 0.0;
    return __ddiv_rn(inter, uni);
}

extern "C" __global__ void nms_bitmask(const double* boxes, const int n, const double threshold,
                                       unsigned long long* mask) {
    const int row = blockIdx.y;
    const int col = blockIdx.x;
    const int words = gridDim.x;
    if (col < row) return;  // boxes of an earlier block are never suppressed by a later one
    const int row_size = min(n - row * 64, 64);
    const int col_size = min(n - col * 64, 64);
    __shared__ double blk[64 * 5];
    const int t = threadIdx.x;
    if (t < col_size) {
        const double* b = boxes + (size_t)(col * 64 + t) * 4;
        blk[t * 5 + 0] = b[0];
        blk[t * 5 + 1] = b[1];
        blk[t * 5 + 2] = b[2];
        blk[t * 5 + 3] = b[3];
        blk[t * 5 + 4] = __dmul_rn(__dsub_rn(b[2], b[0]), __dsub_rn(b[3], b[1]));
    }
    __syncthreads();
    if (t < row_size) {
        const int i = row * 64 + t;
        const double* a = boxes + (size_t)i * 4;
        const double aa = __dmul_rn(__dsub_rn(a[2], a[0]), __dsub_rn(a[3], a[1]));
        unsigned long long bits = 0ULL;
        for (int k = (row == col) ? t + 1 : 0; k < col_size; k++) {
            const double* c = blk + k * 5;
            if (iou_rn(a[0], a[1], a[2], a[3], aa, c[0], c[1], c[2], c[3], c[4]) > threshold) {
                bits |= 1ULL << k;
            }
        }
        mask[(size_t)i * words + col] = bits;
    }
}
"""

_kernel = None


def _nms_kernel():
    global _kernel
    if _kernel is None:
        cp = cupy_module()
        _kernel = cp.RawKernel(_SOURCE, "nms_bitmask")
    return _kernel


def nms_gpu(boxes_xyxy, scores, iou_threshold):
    """Greedy NMS of CuPy arrays -> keep (k,) int64 CuPy array; same contract as ops.nms.

    Inputs must be validated already (ops.nms does that): boxes (K, 4) float64, scores (K,) float64.
    """
    cp = cupy_module()
    n = int(boxes_xyxy.shape[0])
    if n == 0:
        return cp.zeros(0, dtype=cp.int64)
    order = np.argsort(-cp.asnumpy(scores), kind="stable")    # host sort: the CPU's tie order
    order_d = cp.asarray(order)
    boxes_sorted = cp.ascontiguousarray(boxes_xyxy[order_d], dtype=cp.float64)
    words = (n + 63) // 64
    mask = cp.zeros((n, words), dtype=cp.uint64)
    _nms_kernel()((words, words), (64,), (boxes_sorted, np.int32(n), np.float64(iou_threshold), mask))
    keep = np.empty(n, dtype=np.intp)
    count = load_extension("_box_kernels").nms_reduce_bitmask(cp.asnumpy(mask), keep)
    return cp.asarray(order[keep[:count]].astype(np.int64))


def nms_bitmask_ref(boxes_sorted_xyxy, iou_threshold):
    """NumPy twin of the CUDA kernel: the (K, ceil(K / 64)) uint64 suppression mask of sorted boxes."""
    from .reference import iou_ref

    n = boxes_sorted_xyxy.shape[0]
    words = (n + 63) // 64
    over = iou_ref(boxes_sorted_xyxy, boxes_sorted_xyxy) > iou_threshold    # (K, K)
    over &= np.triu(np.ones((n, n), dtype=bool), k=1)                     # only later boxes j > i
    padded = np.zeros((n, words * 64), dtype=np.uint64)
    padded[:, :n] = over
    shifts = np.arange(64, dtype=np.uint64)
    return np.bitwise_or.reduce(padded.reshape(n, words, 64) << shifts, axis=2)

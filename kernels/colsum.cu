// colsum.cu: a weight's gradient summed over the rows of a batch, out[j] += sum_r a[r, j] b[r, j] s[r]
// (b and s optional): RMSNorm's dw (a = dy, b = x, s = 1/rms) and a bias's db (a = dy). Deterministic
// without atomics: each block column sums a fixed group of rows in order, then `colsum_finish` adds the
// groups in order.
// CPU twins: the dw / db sums of cpu::grad::rmsnorm_backward and bias_backward; tests: tests/cuda_train.rs
// `rmsnorm_backward_matches_cpu`.
#include "common.cuh"

// partial[group, j] for the rows_per_group rows of blockIdx.y.
extern "C" __global__ void __launch_bounds__(256)
    colsum_partial(float* __restrict__ partial, const float* __restrict__ a, const float* __restrict__ b,
                   const float* __restrict__ s, int rows, int d, int rows_per_group) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    const int from = blockIdx.y * rows_per_group, to = min(from + rows_per_group, rows);
    float acc = 0.f;
    for (int r = from; r < to; r++) {
        float v = a[(size_t)r * d + j];
        if (b) v *= b[(size_t)r * d + j];
        if (s) v *= s[r];
        acc += v;
    }
    partial[(size_t)blockIdx.y * d + j] = acc;
}

extern "C" __global__ void __launch_bounds__(256)
    colsum_finish(float* __restrict__ out, const float* __restrict__ partial, int groups, int d) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float acc = 0.f;
    for (int g = 0; g < groups; g++) acc += partial[(size_t)g * d + j];
    out[j] += acc;
}

// rmsnorm.cu: the residual add fused with the RMSNorm that follows it, one block per row:
//   x[r] += delta[r];  y[b] = x[r] / sqrt(mean(x[r]^2) + eps) * w,   r = rows ? rows[b] : b.
// The residual stream x and the projection output delta are fp32 (cuBLASLt writes delta in fp32), the
// normalised row y is bf16: the next matrix product's input. `delta` null skips the add (the first layer);
// `rows` picks rows (the final norm runs only on the rows whose logits are wanted).
// CPU twin: cpu::ops::rmsnorm after the add; test: tests/cuda_kernels.rs `add_rmsnorm_matches_cpu`.
// Each thread rereads only the elements it wrote, so the second pass needs no barrier beyond block_sum's.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    add_rmsnorm_bf16(float* __restrict__ x, const float* __restrict__ delta, bf16* __restrict__ y,
                     const bf16* __restrict__ w, const int* __restrict__ rows, int d, float eps) {
    __shared__ float scratch[32];
    const size_t r = rows ? (size_t)rows[blockIdx.x] : blockIdx.x;
    float* xr = x + r * d;
    const float* dr = delta ? delta + r * d : nullptr;
    bf16* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = xr[i];
        if (dr) {
            v += dr[i];
            xr[i] = v;
        }
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = __float2bfloat16(xr[i] * inv * __bfloat162float(w[i]));
}

// The backward pass of add_rmsnorm for the rows of one training batch: with r = 1/sqrt(mean(x^2) + eps),
//   g = dresid[row] + r (dy w) - x r^3 / d * sum(dy w x)    (the residual stream's gradient passes the add)
// written over dresid (fp32) and as bf16 into dresid16 (the input of the products that consume it), and
// r into rinv for the weight's gradient (colsum.cu: dw += sum over rows of dy x r).
// CPU twin: cpu::grad::rmsnorm_backward plus the residual's gradient; test: tests/cuda_train.rs
// `rmsnorm_backward_matches_cpu`.
extern "C" __global__ void __launch_bounds__(256)
    rmsnorm_backward(float* __restrict__ dresid, bf16* __restrict__ dresid16, float* __restrict__ rinv,
                     const float* __restrict__ dy, const float* __restrict__ x, const bf16* __restrict__ w, int d,
                     float eps) {
    __shared__ float scratch[32];
    const size_t off = (size_t)blockIdx.x * d;
    const float *xr = x + off, *gr = dy + off;
    float ss = 0.f, dot = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = xr[i];
        ss += v * v;
        dot += gr[i] * __bfloat162float(w[i]) * v;
    }
    const float r = rsqrtf(block_sum(ss, scratch) / d + eps);
    const float c = r * r * r / d * block_sum(dot, scratch);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float g = dresid[off + i] + r * gr[i] * __bfloat162float(w[i]) - c * xr[i];
        dresid[off + i] = g;
        dresid16[off + i] = __float2bfloat16(g);
    }
    if (threadIdx.x == 0) rinv[blockIdx.x] = r;
}

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

// rmsnorm.cu: y = x / sqrt(mean(x^2) + eps) * w, one block per row (CPU twin: cpu::ops::rmsnorm).
// bf16 in and out, fp32 accumulation; the row is read twice (sum of squares, then scale), which stays in L1/L2
// for the hidden sizes we serve (<= 8192).
#include "common.cuh"

extern "C" __global__ void rmsnorm_bf16(bf16* __restrict__ y, const bf16* __restrict__ x,
                                        const bf16* __restrict__ w, int d, float eps) {
    __shared__ float scratch[32];
    const bf16* xr = x + (size_t)blockIdx.x * d;
    bf16* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = __bfloat162float(xr[i]);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        yr[i] = __float2bfloat16(__bfloat162float(xr[i]) * inv * __bfloat162float(w[i]));
}

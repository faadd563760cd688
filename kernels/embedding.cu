// embedding.cu: the residual stream's first value, x[r] = table[tokens[r]] in fp32, one block per row.
// CPU twin: CpuModel::embed (cpu/model.rs); test: tests/cuda_kernels.rs `embed_matches_cpu`.
// Token ids were checked against the vocabulary on the host (CpuModel::check_tokens's rule).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) embed_bf16(float* __restrict__ x, const bf16* __restrict__ table,
                                                             const unsigned* __restrict__ tokens, int d) {
    const bf16* src = table + (size_t)tokens[blockIdx.x] * d;
    float* dst = x + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
}

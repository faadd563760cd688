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

// The backward pass, a deterministic scatter-add with no atomics: the host groups the positions by token
// (cuda::norm::EmbedGrad, in position order), and block b adds the gradient rows of token ids[b]'s
// positions into its row of d_table, in that order, as the CPU twin visits them.
// CPU twin: cpu::grad::embedding_backward (bit-identical); test: tests/cuda_train.rs
// `embed_backward_matches_cpu`.
extern "C" __global__ void __launch_bounds__(256)
    embed_backward(float* __restrict__ d_table, const float* __restrict__ d_x, const unsigned* __restrict__ ids,
                   const unsigned* __restrict__ starts, const unsigned* __restrict__ positions, int d) {
    float* dst = d_table + (size_t)ids[blockIdx.x] * d;
    const unsigned from = starts[blockIdx.x], to = starts[blockIdx.x + 1];
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = dst[i];
        for (unsigned k = from; k < to; k++) acc += d_x[(size_t)positions[k] * d + i];
        dst[i] = acc;
    }
}

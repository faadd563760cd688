// swiglu.cu: out[r, j] = silu(gate[r, j]) * up[r, j] over rows of the fused [gate | up] projection (2f wide),
// bf16 in and out, fp32 arithmetic. CPU twin: cpu::ops::swiglu; test: tests/cuda_kernels.rs `swiglu_matches_cpu`.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    swiglu_bf16(bf16* __restrict__ out, const bf16* __restrict__ gate_up, int f, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / f, j = i - r * f;
        const float g = __bfloat162float(gate_up[r * 2 * f + j]), u = __bfloat162float(gate_up[r * 2 * f + f + j]);
        out[i] = __float2bfloat16(g / (1.f + expf(-g)) * u);
    }
}

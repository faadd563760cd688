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

// The backward pass: with s = sigmoid(gate), d_gate = d_out up s (1 + gate (1 - s)), d_up = d_out gate s,
// into the [d_gate | d_up] rows (bf16: the input of the gate/up products' gradients); d_out is fp32 (the
// down projection's input gradient, as cuBLASLt writes it).
// CPU twin: cpu::grad::swiglu_backward; test: tests/cuda_train.rs `swiglu_backward_matches_cpu`.
extern "C" __global__ void __launch_bounds__(256) swiglu_backward_bf16(bf16* __restrict__ d_gate_up,
                                                                       const float* __restrict__ d_out,
                                                                       const bf16* __restrict__ gate_up, int f,
                                                                       long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long r = i / f, j = i - r * f, at = r * 2 * f + j;
        const float g = __bfloat162float(gate_up[at]), u = __bfloat162float(gate_up[at + f]), o = d_out[i];
        const float s = 1.f / (1.f + expf(-g));
        d_gate_up[at] = __float2bfloat16(o * u * s * (1.f + g * (1.f - s)));
        d_gate_up[at + f] = __float2bfloat16(o * g * s);
    }
}

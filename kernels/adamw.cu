// adamw.cu: the optimizer step over all of a model's parameters in one launch, fp32 master weights and
// moments, and the bf16 copy that rollouts read written in the same pass; before it, the global gradient
// norm for clipping, reduced in a fixed order.
// CPU twins: optim::clip_grad_norm and optim::AdamW::step; test: tests/cuda_train.rs `adamw_matches_cpu`.
//
// Every parameter, gradient and moment lives in one flat buffer each (the model's tensors end to end), so
// "multi-tensor" is one grid over all of them. The step's scalars are formed on the host in f64 exactly as
// the CPU twin forms them, and each update uses the twin's operations in its order, every one correctly
// rounded (explicit __f*_rn intrinsics, which nvcc never contracts into an FMA, and fmaf where the twin has
// mul_add): given the same clip coefficient, a GPU step is bit-identical to the CPU's.
// The norm differs from the CPU's only in the order of the f64 sums inside a chunk; it is the same on every
// run (fixed chunks, fixed tree, no atomics).
#include "common.cuh"

// Elements per partial sum of squares: the CPU twin's chunk (optim.rs CHUNK).
#define NORM_CHUNK 16384

// partial[b] = sum of g[i]^2 over chunk b (NORM_CHUNK elements), in f64.
extern "C" __global__ void __launch_bounds__(256)
    grad_sumsq_chunks(const float* __restrict__ g, long long n, double* __restrict__ partial) {
    __shared__ double scratch[32];
    const long long start = (long long)blockIdx.x * NORM_CHUNK;
    const long long end = min(start + NORM_CHUNK, n);
    double s = 0.0;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) s += (double)g[i] * (double)g[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One block: out[0] = the global norm (f32 of the f64 root), out[1] = the clip coefficient the AdamW
// step applies: max_norm / (norm + 1e-6) when that is below 1 and the norm is finite, else 1 (the twin
// leaves the gradients alone then).
extern "C" __global__ void __launch_bounds__(1024)
    grad_norm_finish(const double* __restrict__ partial, int chunks, float max_norm, float* __restrict__ out) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) s += partial[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) {
        const float norm = (float)sqrt(s);
        const float coef = __fdiv_rn(max_norm, __fadd_rn(norm, 1e-6f));
        out[0] = norm;
        out[1] = isfinite(norm) && coef < 1.f ? coef : 1.f;
    }
}

// One AdamW step (optim.rs documents the formula and the order): with g = grad * clip[1],
//   p *= decay; m = lerp(m, g, m_weight); v = fma(v_weight g, g, v v_decay);
//   p += neg_step * m / (sqrt(v) / bc2_sqrt + eps);  p16 = bf16(p).
// decay is 1 when there is no weight decay (a multiplication by 1 changes nothing, as skipping it).
extern "C" __global__ void __launch_bounds__(256)
    adamw_step(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v, const float* __restrict__ grad,
               bf16* __restrict__ p16, long long n, const float* __restrict__ clip, float decay, float m_weight,
               float v_decay, float v_weight, float neg_step, float bc2_sqrt, float eps) {
    const float coef = clip[1];
    const bool low = fabsf(m_weight) < 0.5f;  // ATen's lerp picks its formula by the weight
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = coef < 1.f ? __fmul_rn(grad[i], coef) : grad[i];
        const float pi = __fmul_rn(p[i], decay);
        const float diff = __fsub_rn(g, m[i]);
        const float mi = low ? fmaf(m_weight, diff, m[i]) : fmaf(__fsub_rn(m_weight, 1.f), diff, g);
        const float vi = fmaf(__fmul_rn(v_weight, g), g, __fmul_rn(v[i], v_decay));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        const float pn = __fadd_rn(pi, __fdiv_rn(__fmul_rn(neg_step, mi), denom));
        m[i] = mi;
        v[i] = vi;
        p[i] = pn;
        p16[i] = __float2bfloat16(pn);
    }
}

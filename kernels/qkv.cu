// qkv.cu: from the fused q/k/v projection of each token (fp32, [rows, q_dim + 2 kv_dim]) to attention's
// inputs in one pass: add the q/k/v biases (qwen2), RMSNorm each q and k head (qwen3), rotate q and k by the
// token's position (RoPE, rotate-half layout: dimension i pairs with i + hd/2), write q as bf16 and append k
// and v (bf16) to the paged KV pool at the token's slot (`slots[r]` = block * block_size + offset, so the
// pool row is slots[r] * kv_dim). A row whose slot is negative appends nothing: the padding rows of a decode
// step replayed as a CUDA graph (src/cuda/graphs.rs) have no place in the pool.
// CPU twin: the tail of CpuModel::attn_in_by (bias, ops::rmsnorm_inplace, Rope::apply) and the pool write
// of CpuModel::step; test: tests/cuda_kernels.rs `qkv_matches_cpu`.
//
// One warp per head: lane l holds elements l + 32 j (j < hd / 32), so each rotation pair (i, i + hd/2) lies in
// one lane and a head's norm is one warp sum.
// Angles are pos * inv_freq in fp32, as the CPU computes them; inv_freq carries the llama3 scaling.
#include "common.cuh"

// One kernel per head size, so that each lane's elements live in registers (a runtime-sized array would go to
// local memory): qkv_rope_append_64, _128, _256.
template <int HD>
__device__ __forceinline__ void qkv_rope_append(bf16* __restrict__ q_out, bf16* __restrict__ k_pool,
                                                bf16* __restrict__ v_pool, const float* __restrict__ qkv,
                                                const bf16* __restrict__ bias, const bf16* __restrict__ q_norm,
                                                const bf16* __restrict__ k_norm, const float* __restrict__ inv_freq,
                                                const int* __restrict__ positions, const int* __restrict__ slots,
                                                int n_heads, int n_kv, float eps) {
    constexpr int PER_LANE = HD / 32, HALF = PER_LANE / 2;
    const int r = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int qd = n_heads * HD, kvd = n_kv * HD, width = qd + 2 * kvd;
    const float pos = (float)positions[r];
    const float* row = qkv + (size_t)r * width;
    for (int h = warp; h < n_heads + 2 * n_kv; h += warps) {
        const int base = h * HD;  // column of this head in the fused row (q heads, then k, then v)
        const bool is_q = h < n_heads, is_v = h >= n_heads + n_kv;
        if (!is_q && slots[r] < 0) continue;  // warp-uniform: a padding row's k and v go nowhere
        float v[PER_LANE];
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) {
            const int c = base + lane + 32 * j;
            v[j] = row[c] + (bias ? __bfloat162float(bias[c]) : 0.f);
        }
        if (!is_v) {
            const bf16* nw = is_q ? q_norm : k_norm;
            if (nw) {
                float ss = 0.f;
#pragma unroll
                for (int j = 0; j < PER_LANE; j++) ss += v[j] * v[j];
                const float inv = rsqrtf(warp_sum(ss) / HD + eps);
#pragma unroll
                for (int j = 0; j < PER_LANE; j++) v[j] *= inv * __bfloat162float(nw[lane + 32 * j]);
            }
#pragma unroll
            for (int j = 0; j < HALF; j++) {
                float s, c;
                sincosf(pos * inv_freq[lane + 32 * j], &s, &c);
                const float a = v[j], b = v[j + HALF];
                v[j] = a * c - b * s;
                v[j + HALF] = b * c + a * s;
            }
        }
        bf16* dst;
        if (is_q) {
            dst = q_out + (size_t)r * qd + base;
        } else {
            const size_t slot_row = (size_t)slots[r] * kvd + (is_v ? base - qd - kvd : base - qd);
            dst = (is_v ? v_pool : k_pool) + slot_row;
        }
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) dst[lane + 32 * j] = __float2bfloat16(v[j]);
    }
}

#define QKV_KERNEL(HD)                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) qkv_rope_append_##HD(                                      \
        bf16* q_out, bf16* k_pool, bf16* v_pool, const float* qkv, const bf16* bias, const bf16* q_norm,          \
        const bf16* k_norm, const float* inv_freq, const int* positions, const int* slots, int n_heads, int n_kv, \
        float eps) {                                                                                              \
        qkv_rope_append<HD>(q_out, k_pool, v_pool, qkv, bias, q_norm, k_norm, inv_freq, positions, slots, n_heads,  \
                            n_kv, eps);                                                                           \
    }
QKV_KERNEL(64)
QKV_KERNEL(128)
QKV_KERNEL(256)

// The backward pass over a training batch (rows r = tokens, position positions[r]): from dq [t, q_dim] and
// dk, dv [t, kv_dim] (fp32, attention's backward) to the fused projection's gradient d_qkv [t, width] in
// bf16 (the input of its two products) and, when `d_qkv32` is given, in fp32 (for the bias's column sum).
// Per q/k head: un-rotate (RoPE's transpose), then through the head norm (recomputed from the forward's
// `qkv` row and bias): with u = raw + bias and r = 1/sqrt(mean(u^2) + eps), du = r (dn w) - u r^3 / HD
// sum(dn w u); the norm weights' gradient, sum over the row's heads of dn u r, goes to norm_partial
// [2, t, HD] (q, then k; heads added in order) for a column sum over rows. v passes through.
// CPU twin: cpu::grad::rope_backward, rmsnorm_backward (per head) and bias_backward, as cpu::train uses
// them; test: tests/cuda_train.rs `qkv_backward_matches_cpu`. One block per row, one warp per head.
template <int HD>
__device__ __forceinline__ void qkv_backward(bf16* __restrict__ d_qkv, float* __restrict__ d_qkv32,
                                             float* __restrict__ norm_partial, const float* __restrict__ dq,
                                             const float* __restrict__ dk, const float* __restrict__ dv,
                                             const float* __restrict__ qkv, const bf16* __restrict__ bias,
                                             const bf16* __restrict__ q_norm, const bf16* __restrict__ k_norm,
                                             const float* __restrict__ inv_freq, const int* __restrict__ positions,
                                             int n_heads, int n_kv, float eps) {
    constexpr int PER_LANE = HD / 32, HALF = PER_LANE / 2;
    __shared__ float wsum[8][2][HD];  // per warp: its heads' norm-weight gradients, q and k
    const int r = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int qd = n_heads * HD, kvd = n_kv * HD, width = qd + 2 * kvd;
    const float pos = (float)positions[r];
    const float* row = qkv + (size_t)r * width;
    float gwq[PER_LANE] = {0.f}, gwk[PER_LANE] = {0.f};  // this warp's norm-weight gradients
    for (int h = warp; h < n_heads + 2 * n_kv; h += warps) {
        const int base = h * HD;
        const bool is_q = h < n_heads, is_v = h >= n_heads + n_kv;
        const float* src = is_q ? dq + (size_t)r * qd + base
                                : (is_v ? dv + (size_t)r * kvd + (base - qd - kvd) : dk + (size_t)r * kvd + (base - qd));
        float g[PER_LANE];
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) g[j] = src[lane + 32 * j];
        if (!is_v) {
#pragma unroll
            for (int j = 0; j < HALF; j++) {  // the rotation's transpose: the same angle, sin negated
                float s, c;
                sincosf(pos * inv_freq[lane + 32 * j], &s, &c);
                const float a = g[j], b = g[j + HALF];
                g[j] = a * c + b * s;
                g[j + HALF] = b * c - a * s;
            }
            const bf16* nw = is_q ? q_norm : k_norm;
            if (nw) {
                float u[PER_LANE], ss = 0.f, dot = 0.f;
#pragma unroll
                for (int j = 0; j < PER_LANE; j++) {
                    const int c = base + lane + 32 * j;
                    u[j] = row[c] + (bias ? __bfloat162float(bias[c]) : 0.f);
                    ss += u[j] * u[j];
                    dot += g[j] * __bfloat162float(nw[lane + 32 * j]) * u[j];
                }
                const float inv = rsqrtf(warp_sum(ss) / HD + eps);
                const float cc = inv * inv * inv / HD * warp_sum(dot);
#pragma unroll
                for (int j = 0; j < PER_LANE; j++) {
                    if (is_q) gwq[j] += g[j] * u[j] * inv;
                    else gwk[j] += g[j] * u[j] * inv;
                    g[j] = inv * g[j] * __bfloat162float(nw[lane + 32 * j]) - cc * u[j];
                }
            }
        }
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) {
            const size_t at = (size_t)r * width + base + lane + 32 * j;
            d_qkv[at] = __float2bfloat16(g[j]);
            if (d_qkv32) d_qkv32[at] = g[j];
        }
    }
    if (!norm_partial) return;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) {
        wsum[warp][0][lane + 32 * j] = gwq[j];
        wsum[warp][1][lane + 32 * j] = gwk[j];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * HD; i += blockDim.x) {
        float s = 0.f;
        for (int w = 0; w < warps; w++) s += wsum[w][i / HD][i % HD];
        norm_partial[(size_t)(i / HD) * gridDim.x * HD + (size_t)r * HD + i % HD] = s;
    }
}

#define QKV_BACKWARD_KERNEL(HD)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) qkv_backward_##HD(                                         \
        bf16* d_qkv, float* d_qkv32, float* norm_partial, const float* dq, const float* dk, const float* dv,      \
        const float* qkv, const bf16* bias, const bf16* q_norm, const bf16* k_norm, const float* inv_freq,        \
        const int* positions, int n_heads, int n_kv, float eps) {                                                 \
        qkv_backward<HD>(d_qkv, d_qkv32, norm_partial, dq, dk, dv, qkv, bias, q_norm, k_norm, inv_freq, positions, \
                         n_heads, n_kv, eps);                                                                     \
    }
QKV_BACKWARD_KERNEL(64)
QKV_BACKWARD_KERNEL(128)
QKV_BACKWARD_KERNEL(256)

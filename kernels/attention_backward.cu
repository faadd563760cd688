// attention_backward.cu: the backward pass of causal grouped-query attention over packed variable-length
// training sequences, without an S x S matrix in memory: every probability is recomputed from q, k and the
// row's log-sum-exp, FlashAttention-2's recipe. Deterministic with no atomics: dq is one pass over the
// keys per query row, dk and dv one pass over the query rows (and the group's query heads, in order) per
// key row.
//   attn_bwd_rows: per (row, head): lse = log sum_j exp(s_ij) and D_i = dO_i . O_i, with O_i recomputed in
//                  fp32 by an online softmax (so the pass needs no saved output).
//   attn_bwd_dq:   dq_i = scale sum_j P_ij (dO_i . v_j - D_i) k_j
//   attn_bwd_dkv:  dv_j = sum_i P_ij dO_i,  dk_j = scale sum_i P_ij (dO_i . v_j - D_i) q_i   (i >= j)
// with s_ij = scale q_i . k_j, P_ij = exp(s_ij - lse_i), scale = 1/sqrt(hd). Layout: q, dO and dq
// [T, n_heads * hd], dk, dv [T, n_kv * hd]; row r belongs to the sequence [starts[r], ends[r]) and sees keys
// starts[r]..=r. k and v hold row r's key and value at row kv_rows[r] (a KV pool's slot), or at row r when
// kv_rows is null. Query head h reads kv head h / (n_heads / n_kv).
// One warp per row and head, each lane holding hd / 32 elements (hd a multiple of 32, at most 256); fp32
// arithmetic on bf16 q, k, v and fp32 dO; gradients written in fp32 for the RoPE / norm backward that
// follows. This is the plain SIMT version: correct and exact-order, not yet on tensor cores.
// CPU twin: cpu::grad::attention_backward; test: tests/cuda_train.rs `attention_backward_matches_cpu`.
#include "common.cuh"

#define MAX_PER_LANE 8  // head_dim <= 256

// a . b over one head, each lane holding its `per` elements (d = lane + 32 e); every lane gets the sum.
__device__ __forceinline__ float head_dot(const float (&a)[MAX_PER_LANE], const float (&b)[MAX_PER_LANE], int per) {
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; e++)
        if (e < per) s += a[e] * b[e];
    return warp_sum(s);
}

__device__ __forceinline__ void load_bf16(float (&dst)[MAX_PER_LANE], const bf16* src, int per, int lane) {
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; e++)
        if (e < per) dst[e] = __bfloat162float(src[lane + 32 * e]);
}

__device__ __forceinline__ void load_f32(float (&dst)[MAX_PER_LANE], const float* src, int per, int lane) {
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; e++)
        if (e < per) dst[e] = src[lane + 32 * e];
}

__device__ __forceinline__ void store_f32(float* dst, const float (&src)[MAX_PER_LANE], float mul, int per, int lane) {
#pragma unroll
    for (int e = 0; e < MAX_PER_LANE; e++)
        if (e < per) dst[lane + 32 * e] = src[e] * mul;
}

// lse and D for every (row, head): stats[2 (r n_heads + h)..] = (lse, D).
extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_rows(float* __restrict__ stats, const bf16* __restrict__ q, const bf16* __restrict__ k,
                  const bf16* __restrict__ v, const float* __restrict__ dout, const int* __restrict__ starts,
                  const int* __restrict__ kv_rows, int t, int n_heads, int n_kv, int hd, float scale) {
    const int lane = threadIdx.x & 31;
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (w >= (long long)t * n_heads) return;
    const int row = (int)(w / n_heads), h = (int)(w % n_heads), kvh = h / (n_heads / n_kv), per = hd >> 5;
    const int qd = n_heads * hd, kvd = n_kv * hd;
    float qi[MAX_PER_LANE], kj[MAX_PER_LANE], o[MAX_PER_LANE] = {0.f};
    load_bf16(qi, q + (size_t)row * qd + h * hd, per, lane);
    float m = -INFINITY, l = 0.f;
    for (int j = starts[row]; j <= row; j++) {
        load_bf16(kj, k + (size_t)(kv_rows ? kv_rows[j] : j) * kvd + kvh * hd, per, lane);
        const float s = head_dot(qi, kj, per) * scale;
        const float m_new = fmaxf(m, s), c = expf(m - m_new), p = expf(s - m_new);
        l = l * c + p;
        const bf16* vj = v + (size_t)(kv_rows ? kv_rows[j] : j) * kvd + kvh * hd;
#pragma unroll
        for (int e = 0; e < MAX_PER_LANE; e++)
            if (e < per) o[e] = o[e] * c + p * __bfloat162float(vj[lane + 32 * e]);
        m = m_new;
    }
    float g[MAX_PER_LANE];
    load_f32(g, dout + (size_t)row * qd + h * hd, per, lane);
    const float inv_l = 1.f / l, delta = head_dot(g, o, per) * inv_l;
    if (lane == 0) {
        stats[2 * w] = m + logf(l);
        stats[2 * w + 1] = delta;
    }
}

// dq for every (row, head), one warp each, keys in order.
extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dq(float* __restrict__ dq, const float* __restrict__ stats, const bf16* __restrict__ q,
                const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ dout,
                const int* __restrict__ starts, const int* __restrict__ kv_rows, int t, int n_heads, int n_kv,
                int hd, float scale) {
    const int lane = threadIdx.x & 31;
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (w >= (long long)t * n_heads) return;
    const int row = (int)(w / n_heads), h = (int)(w % n_heads), kvh = h / (n_heads / n_kv), per = hd >> 5;
    const int qd = n_heads * hd, kvd = n_kv * hd;
    const float lse = stats[2 * w], delta = stats[2 * w + 1];
    float qi[MAX_PER_LANE], g[MAX_PER_LANE], kj[MAX_PER_LANE], vj[MAX_PER_LANE], acc[MAX_PER_LANE] = {0.f};
    load_bf16(qi, q + (size_t)row * qd + h * hd, per, lane);
    load_f32(g, dout + (size_t)row * qd + h * hd, per, lane);
    for (int j = starts[row]; j <= row; j++) {
        load_bf16(kj, k + (size_t)(kv_rows ? kv_rows[j] : j) * kvd + kvh * hd, per, lane);
        load_bf16(vj, v + (size_t)(kv_rows ? kv_rows[j] : j) * kvd + kvh * hd, per, lane);
        const float p = expf(head_dot(qi, kj, per) * scale - lse);
        const float ds = p * (head_dot(g, vj, per) - delta);
#pragma unroll
        for (int e = 0; e < MAX_PER_LANE; e++)
            if (e < per) acc[e] += ds * kj[e];
    }
    store_f32(dq + (size_t)row * qd + h * hd, acc, scale, per, lane);
}

// dk and dv for every (key row, kv head), one warp each: the group's query heads in order, each over the
// query rows j..end of the key's sequence in order.
extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dkv(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ stats,
                 const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                 const float* __restrict__ dout, const int* __restrict__ ends, const int* __restrict__ kv_rows, int t,
                 int n_heads, int n_kv, int hd, float scale) {
    const int lane = threadIdx.x & 31;
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (w >= (long long)t * n_kv) return;
    const int j = (int)(w / n_kv), g = (int)(w % n_kv), group = n_heads / n_kv, per = hd >> 5;
    const int qd = n_heads * hd, kvd = n_kv * hd;
    float kj[MAX_PER_LANE], vj[MAX_PER_LANE], qi[MAX_PER_LANE], gi[MAX_PER_LANE];
    float ak[MAX_PER_LANE] = {0.f}, av[MAX_PER_LANE] = {0.f};
    load_bf16(kj, k + (size_t)(kv_rows ? kv_rows[j] : j) * kvd + g * hd, per, lane);
    load_bf16(vj, v + (size_t)(kv_rows ? kv_rows[j] : j) * kvd + g * hd, per, lane);
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int i = j; i < ends[j]; i++) {
            load_bf16(qi, q + (size_t)i * qd + h * hd, per, lane);
            load_f32(gi, dout + (size_t)i * qd + h * hd, per, lane);
            const size_t at = 2 * ((size_t)i * n_heads + h);
            const float p = expf(head_dot(qi, kj, per) * scale - stats[at]);
            const float ds = p * (head_dot(gi, vj, per) - stats[at + 1]);
#pragma unroll
            for (int e = 0; e < MAX_PER_LANE; e++)
                if (e < per) {
                    av[e] += p * gi[e];
                    ak[e] += ds * qi[e];
                }
        }
    }
    store_f32(dk + (size_t)j * kvd + g * hd, ak, scale, per, lane);  // packed rows, whatever kv_rows says
    store_f32(dv + (size_t)j * kvd + g * hd, av, 1.f, per, lane);
}

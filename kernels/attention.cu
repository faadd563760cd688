// attention.cu: paged causal grouped-query attention over the bf16 KV pool.
// CPU twin: cpu::ops::attention_rows; test: tests/cuda_attention.rs; launcher and plan: src/cuda/attention.rs.
//
// Layout. K and V of one layer are each [num_blocks * block_size, kv_dim] bf16, slot-major: position p of a
// sequence whose block table starts at tables[tbl] lives at slot tables[tbl + p / block_size] * block_size +
// p % block_size; kv head g is columns [g * HD, (g + 1) * HD). q and out are [rows, n_heads * HD] bf16; query
// head h reads kv head h / group. Row r attends to positions 0..=pos(r) of its sequence, scale 1/sqrt(HD).
// Softmax and accumulation are fp32; scores are kept in log2 units (q.k * scale * log2(e)) so that exp2f is
// the only exponential.
//
// One block = a set of queries that share a kv head: `nrows` consecutive rows of one sequence at consecutive
// positions pos0.. (a tile, described by 4 u32 of host metadata: first row, rows, pos0, offset of the
// sequence's block table in `tables`) times `nh` consecutive query heads of kv head g (a head chunk), over the
// key range [k0, k1). The block streams that range through shared memory KT keys at a time (each K/V row is
// read from the pool once per block), and each warp runs an online softmax for the queries it owns:
//   scores: lane j scores key kt0 + j against each of the warp's queries (the K row in shared memory, padded
//           so that the lanes' 16-byte reads do not conflict), masks it (key >= k1, or key > the query's
//           position: the causal mask inside a prefill tile), then warp max / warp sum update (m, l);
//   values: each lane owns HD/32 output dims and adds p_j * V[j] for every key j of the tile, in key order.
// Query i of a block is (row i / nh, head h0 + i % nh); warp w owns queries w, w + NW, ..., at most QPW.
//
// Kernels (grid.y = n_kv * hchunks, block = 128 threads, static shared memory only):
//   attn_prefill_hd{64,128}: grid.x = prefill tiles; key range [0, pos0 + nrows); writes out.
//   attn_decode_hd{64,128}:  grid.x = decode rows * splits; one row per tile; split s covers keys
//                            [s * split_len, min((s + 1) * split_len, pos + 1)); writes (m, l, acc) to the
//                            split scratch (empty splits write m = -inf, l = 0), or out when splits == 1.
//   attn_combine_hd{64,128}: grid (decode rows, n_heads), 32 threads: merges the splits, writes out.
#include "common.cuh"

namespace {

constexpr int NW = 4;         // warps per block
constexpr int NT = NW * 32;   // threads per block
constexpr int KT = 32;        // keys per shared-memory tile: one per lane when scoring
constexpr int KPAD = 8;       // bf16 of padding per K/V row: a row is an odd number of 16-byte units, so the
                              // 8 lanes of a quarter-warp reading 16 bytes of 8 different rows hit 8 distinct
                              // bank groups
#define NEG_INF (-__int_as_float(0x7f800000))  // -inf (a macro: __int_as_float is not constexpr)

// Queries per block: decode blocks have one row (a head group of up to 8), prefill blocks a tile of rows.
constexpr int QPW_DECODE = 2;
constexpr int QPW_PREFILL = 8;

template <int HD, int QPW>
struct Smem {
    float q[NW * QPW][HD];                 // the block's queries, fp32 copies of the bf16 inputs
    float p[NW * QPW][KT];                 // exp2(score - m) of the current tile, one row per query
    __align__(16) bf16 k[KT][HD + KPAD];   // the current tile's keys (zero past k1)
    __align__(16) bf16 v[KT][HD + KPAD];   // and values (zero past k1, so 0 * v stays 0)
};

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Low and high bf16 of a 32-bit word, exactly, as floats.
__device__ __forceinline__ float bf_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

// The block's queries and where they go: see the header.
struct Block {
    unsigned row0;  // first query row
    int nrows;      // query rows (consecutive positions pos0..)
    int pos0;       // position of row0
    unsigned tbl;   // offset of the sequence's block table in `tables`
    int g;          // kv head
    int h0, nh;     // query heads h0 .. h0 + nh - 1
};

__device__ __forceinline__ Block block_of(uint4 t, int n_kv, int group, int hchunks, int hpc) {
    Block b;
    b.row0 = t.x;
    b.nrows = (int)t.y;
    b.pos0 = (int)t.z;
    b.tbl = t.w;
    b.g = blockIdx.y / hchunks;
    const int c = blockIdx.y % hchunks;
    b.h0 = b.g * group + c * hpc;
    b.nh = min(hpc, group - c * hpc);
    return b;
}

// Online softmax attention of the block's queries over keys [k0, k1) (k0 < k1, block-uniform). On return, for
// each query t < QPW the warp owns (those with warp + NW * t < nrows * nh): m[t] (log2 units; -inf if every key
// was masked), l[t] = sum of exp2(s - m), acc[t][e] = sum of exp2(s - m) * v over the lane's dims
// 2 * (lane + 32 * w) + {0, 1} for w < HD / 64 (acc[t][2w], acc[t][2w + 1]).
template <int HD, int QPW>
__device__ __forceinline__ void attend(Smem<HD, QPW>& sm, const Block& b, const bf16* __restrict__ q,
                                       const bf16* __restrict__ k, const bf16* __restrict__ v,
                                       const unsigned* __restrict__ tables, int n_heads, int kv_dim,
                                       int block_size, int k0, int k1, float scale_log2, float (&m)[QPW],
                                       float (&l)[QPW], float (&acc)[QPW][HD / 32]) {
    constexpr int W = HD / 64;   // bf16x2 words of a V row per lane
    constexpr int CPR = HD / 8;  // 16-byte chunks per K/V row
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nq = b.nrows * b.nh;
    const size_t q_stride = (size_t)n_heads * HD;
    if (nq < 1 || nq > NW * QPW) __trap();  // the host plan guarantees 1 <= nq <= NW * QPW (block-uniform)

    // Queries into shared memory (each thread a bf16 pair at a time). Read after the loop's first barrier.
    for (int idx = tid; idx < nq * (HD / 2); idx += NT) {
        const int i = idx / (HD / 2), w2 = idx % (HD / 2);
        const int r = i / b.nh, h = b.h0 + i % b.nh;
        const unsigned x =
            reinterpret_cast<const unsigned*>(q + (size_t)(b.row0 + r) * q_stride + (size_t)h * HD)[w2];
        *reinterpret_cast<float2*>(&sm.q[i][2 * w2]) = make_float2(bf_lo(x), bf_hi(x));
    }
    // How many queries this warp owns (warp-uniform).
    const int mine = warp < nq ? (nq - warp + NW - 1) / NW : 0;
#pragma unroll
    for (int t = 0; t < QPW; ++t) {
        m[t] = NEG_INF;
        l[t] = 0.f;
#pragma unroll
        for (int e = 0; e < HD / 32; ++e) acc[t][e] = 0.f;
    }

    for (int kt0 = k0; kt0 < k1; kt0 += KT) {
        __syncthreads();  // every warp is done with the previous tile's K/V (and q is written, first time)
        for (int idx = tid; idx < KT * CPR; idx += NT) {
            const int j = idx / CPR, c = idx % CPR;
            const int kp = kt0 + j;
            uint4 kx = make_uint4(0u, 0u, 0u, 0u), vx = kx;
            if (kp < k1) {
                const size_t blk = __ldg(tables + b.tbl + kp / block_size);
                const size_t off = (blk * block_size + kp % block_size) * (size_t)kv_dim + (size_t)b.g * HD + c * 8;
                kx = __ldg(reinterpret_cast<const uint4*>(k + off));
                vx = __ldg(reinterpret_cast<const uint4*>(v + off));
            }
            *reinterpret_cast<uint4*>(&sm.k[j][c * 8]) = kx;
            *reinterpret_cast<uint4*>(&sm.v[j][c * 8]) = vx;
        }
        __syncthreads();  // the tile is in shared memory

        // Scores of key kt0 + lane against the warp's queries: dot products in a fixed order (dims ascending).
        float s[QPW];
#pragma unroll
        for (int t = 0; t < QPW; ++t) s[t] = 0.f;
#pragma unroll 2
        for (int c = 0; c < CPR; ++c) {
            const uint4 kw = *reinterpret_cast<const uint4*>(&sm.k[lane][c * 8]);
            const float kf[8] = {bf_lo(kw.x), bf_hi(kw.x), bf_lo(kw.y), bf_hi(kw.y),
                                 bf_lo(kw.z), bf_hi(kw.z), bf_lo(kw.w), bf_hi(kw.w)};
#pragma unroll
            for (int t = 0; t < QPW; ++t) {
                if (t < mine) {
                    const float4 qa = *reinterpret_cast<const float4*>(&sm.q[warp + NW * t][c * 8]);
                    const float4 qb = *reinterpret_cast<const float4*>(&sm.q[warp + NW * t][c * 8 + 4]);
                    float a = s[t];
                    a = fmaf(qa.x, kf[0], a);
                    a = fmaf(qa.y, kf[1], a);
                    a = fmaf(qa.z, kf[2], a);
                    a = fmaf(qa.w, kf[3], a);
                    a = fmaf(qb.x, kf[4], a);
                    a = fmaf(qb.y, kf[5], a);
                    a = fmaf(qb.z, kf[6], a);
                    a = fmaf(qb.w, kf[7], a);
                    s[t] = a;
                }
            }
        }
        // Online softmax update, one query at a time (all lanes of the warp agree on m and l: the xor
        // butterflies combine the same pairs on every lane).
        const int kp = kt0 + lane;
#pragma unroll
        for (int t = 0; t < QPW; ++t) {
            if (t < mine) {
                const int i = warp + NW * t;
                const int last = b.pos0 + i / b.nh;  // the query's own position: the causal limit
                const float sv = (kp < k1 && kp <= last) ? s[t] * scale_log2 : NEG_INF;
                const float m_new = fmaxf(m[t], warp_max(sv));
                const float m_use = m_new == NEG_INF ? 0.f : m_new;  // all masked so far: p = alpha = 0
                const float p = exp2f(sv - m_use);
                const float alpha = exp2f(m[t] - m_use);
                l[t] = l[t] * alpha + warp_sum(p);
                m[t] = m_new;
#pragma unroll
                for (int e = 0; e < HD / 32; ++e) acc[t][e] *= alpha;
                sm.p[i][lane] = p;
            }
        }
        __syncwarp();  // the warp's p rows are written

        // acc += p_j * V[j] for the tile's keys in order (keys past k1 have p = 0 and V = 0).
#pragma unroll 2
        for (int j0 = 0; j0 < KT; j0 += 4) {
            float vf[4][HD / 32];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
                for (int w = 0; w < W; ++w) {
                    const unsigned x = *reinterpret_cast<const unsigned*>(&sm.v[j0 + jj][2 * (lane + 32 * w)]);
                    vf[jj][2 * w] = bf_lo(x);
                    vf[jj][2 * w + 1] = bf_hi(x);
                }
            }
#pragma unroll
            for (int t = 0; t < QPW; ++t) {
                if (t < mine) {
                    const float4 p4 = *reinterpret_cast<const float4*>(&sm.p[warp + NW * t][j0]);
                    const float pj[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
                        for (int e = 0; e < HD / 32; ++e) acc[t][e] = fmaf(pj[jj], vf[jj][e], acc[t][e]);
                    }
                }
            }
        }
    }
}

// out[row, head] = acc / l for the warp's queries (bf16, lane-owned dims).
template <int HD, int QPW>
__device__ __forceinline__ void write_out(bf16* __restrict__ out, const Block& b, int n_heads, const float (&l)[QPW],
                                          const float (&acc)[QPW][HD / 32]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nq = b.nrows * b.nh;
#pragma unroll
    for (int t = 0; t < QPW; ++t) {
        const int i = warp + NW * t;
        if (i < nq) {
            const int r = i / b.nh, h = b.h0 + i % b.nh;
            // l >= 1 whenever the range held an unmasked key (the block's max scores exp2(0) = 1).
            const float inv = l[t] > 0.f ? 1.f / l[t] : 0.f;
            bf16* o = out + (size_t)(b.row0 + r) * ((size_t)n_heads * HD) + (size_t)h * HD;
#pragma unroll
            for (int w = 0; w < HD / 64; ++w)
                reinterpret_cast<__nv_bfloat162*>(o)[lane + 32 * w] =
                    __floats2bfloat162_rn(acc[t][2 * w] * inv, acc[t][2 * w + 1] * inv);
        }
    }
}

template <int HD>
__device__ __forceinline__ void prefill(bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* __restrict__ k,
                                        const bf16* __restrict__ v, const uint4* __restrict__ tiles,
                                        const unsigned* __restrict__ tables, int n_heads, int n_kv, int group,
                                        int hchunks, int hpc, int block_size, float scale_log2) {
    constexpr int QPW = QPW_PREFILL;
    __shared__ Smem<HD, QPW> sm;
    const Block b = block_of(tiles[blockIdx.x], n_kv, group, hchunks, hpc);
    float m[QPW], l[QPW], acc[QPW][HD / 32];
    attend<HD, QPW>(sm, b, q, k, v, tables, n_heads, n_kv * HD, block_size, 0, b.pos0 + b.nrows, scale_log2, m,
                    l, acc);
    write_out<HD, QPW>(out, b, n_heads, l, acc);
}

template <int HD>
__device__ __forceinline__ void decode(bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* __restrict__ k,
                                       const bf16* __restrict__ v, const uint4* __restrict__ tiles,
                                       const unsigned* __restrict__ tables, float* __restrict__ part_acc,
                                       float2* __restrict__ part_ml, int n_heads, int n_kv, int group, int hchunks,
                                       int hpc, int block_size, float scale_log2, int split_len, int splits) {
    constexpr int QPW = QPW_DECODE;
    __shared__ Smem<HD, QPW> sm;
    const int ti = blockIdx.x / splits, split = blockIdx.x % splits;
    const Block b = block_of(tiles[ti], n_kv, group, hchunks, hpc);  // b.nrows == 1
    const int len = b.pos0 + 1;
    const int k0 = split * split_len;
    const int k1 = min(len, k0 + split_len);
    const size_t base = (size_t)ti * n_heads;  // (row, head) index of the block's first scratch entry, / splits
    if (k0 >= k1) {
        // An empty split (this row is shorter than the longest): m = -inf, l = 0, acc left unwritten.
        if (threadIdx.x < b.nh) part_ml[(base + b.h0 + threadIdx.x) * splits + split] = make_float2(NEG_INF, 0.f);
        return;  // block-uniform, before any barrier
    }
    float m[QPW], l[QPW], acc[QPW][HD / 32];
    attend<HD, QPW>(sm, b, q, k, v, tables, n_heads, n_kv * HD, block_size, k0, k1, scale_log2, m, l, acc);
    if (splits == 1) {
        write_out<HD, QPW>(out, b, n_heads, l, acc);
        return;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int t = 0; t < QPW; ++t) {
        const int i = warp + NW * t;
        if (i < b.nh) {
            const size_t e = (base + b.h0 + i) * splits + split;
            if (lane == 0) part_ml[e] = make_float2(m[t], l[t]);
            float2* a = reinterpret_cast<float2*>(part_acc + e * HD);
#pragma unroll
            for (int w = 0; w < HD / 64; ++w) a[lane + 32 * w] = make_float2(acc[t][2 * w], acc[t][2 * w + 1]);
        }
    }
}

// One warp per (decode row, head): out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s over the non-empty
// splits (l_s > 0; an empty split's acc is never read), M = their largest m_s. Splits in order.
template <int HD>
__device__ __forceinline__ void combine(bf16* __restrict__ out, const uint4* __restrict__ tiles,
                                        const float* __restrict__ part_acc, const float2* __restrict__ part_ml,
                                        int n_heads, int splits) {
    const int ti = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    const size_t base = ((size_t)ti * n_heads + h) * splits;
    float mx = NEG_INF;
    for (int s = 0; s < splits; ++s) {
        const float2 ml = part_ml[base + s];
        if (ml.y > 0.f) mx = fmaxf(mx, ml.x);
    }
    float sum = 0.f;
    float o[HD / 32];
#pragma unroll
    for (int e = 0; e < HD / 32; ++e) o[e] = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float2 ml = part_ml[base + s];
        if (ml.y > 0.f) {
            const float w = exp2f(ml.x - mx);
            sum = fmaf(w, ml.y, sum);
            const float2* a = reinterpret_cast<const float2*>(part_acc + (base + s) * HD);
#pragma unroll
            for (int x = 0; x < HD / 64; ++x) {
                const float2 av = a[lane + 32 * x];
                o[2 * x] = fmaf(w, av.x, o[2 * x]);
                o[2 * x + 1] = fmaf(w, av.y, o[2 * x + 1]);
            }
        }
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    bf16* dst = out + (size_t)tiles[ti].x * ((size_t)n_heads * HD) + (size_t)h * HD;
#pragma unroll
    for (int x = 0; x < HD / 64; ++x)
        reinterpret_cast<__nv_bfloat162*>(dst)[lane + 32 * x] = __floats2bfloat162_rn(o[2 * x] * inv, o[2 * x + 1] * inv);
}

}  // namespace

// __launch_bounds__(128, 4): at most 128 registers, 4 blocks (16 warps) per SM. With the thread count alone,
// ptxas spilled a few bytes in the hd64 kernels at 40-72 registers; with min blocks 4 none spills (ptxas -v).
#define ATTN_KERNELS(HD)                                                                                            \
    extern "C" __global__ void __launch_bounds__(NT, 4) attn_prefill_hd##HD(                                           \
        bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, \
        const uint4* __restrict__ tiles, const unsigned* __restrict__ tables, int n_heads, int n_kv, int group,     \
        int hchunks, int hpc, int block_size, float scale_log2) {                                                   \
        prefill<HD>(out, q, k, v, tiles, tables, n_heads, n_kv, group, hchunks, hpc, block_size, scale_log2);       \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(NT, 4) attn_decode_hd##HD(                                            \
        bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, \
        const uint4* __restrict__ tiles, const unsigned* __restrict__ tables, float* __restrict__ part_acc,          \
        float2* __restrict__ part_ml, int n_heads, int n_kv, int group, int hchunks, int hpc, int block_size,       \
        float scale_log2, int split_len, int splits) {                                                              \
        decode<HD>(out, q, k, v, tiles, tables, part_acc, part_ml, n_heads, n_kv, group, hchunks, hpc, block_size,  \
                   scale_log2, split_len, splits);                                                                  \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(32) attn_combine_hd##HD(                                           \
        bf16* __restrict__ out, const uint4* __restrict__ tiles, const float* __restrict__ part_acc,                \
        const float2* __restrict__ part_ml, int n_heads, int splits) {                                              \
        combine<HD>(out, tiles, part_acc, part_ml, n_heads, splits);                                                \
    }

ATTN_KERNELS(64)
ATTN_KERNELS(128)

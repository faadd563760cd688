// sample.cu: the next token of each row of fp32 logits `[rows, vocab]`, with its log-probability: greedy
// (argmax) at temperature 0, otherwise temperature, then top-k, then top-p (nucleus), then one draw.
// Kernel `sample_f32`: one block of SAMPLE_THREADS (1024) threads per row; the launcher is
// src/cuda/sample.rs (`Sampler`), the CPU twin `mappa::sample::sample` (src/sample.rs), the test
// tests/cuda_sample.rs (every mode against the twin, row by row).
//
// Why no sort. The twin sorts the candidates by (prob desc, index asc). A block cannot sort 152k values
// cheaply, and need not: every cut and the draw are positions in that order, and a position is found by
// bisecting a threshold t on the prob's bit pattern (non-negative floats order like their bits) with
// block-wide counts and f64 sums over {kept, p >= t} (`tally`), then picking inside the tie group
// {p == t} in index order (`nth_equal`). About 30 passes over the row per search, L2-resident.
//
// Semantics (the test checks them against src/sample.rs):
//   scaled_i = logit_i / T (IEEE division; T = 1 when greedy), lse = max + (float)ln(sum_i (double)
//   exp(scaled_i - max)), log-prob of the pick = scaled[pick] - lse over the WHOLE vocabulary.
//   Greedy: argmax of scaled, the lowest index wins ties.
//   Otherwise p_i = exp(scaled_i - lse) (f32), order (p desc, index asc); keep the first top_k (when
//   0 < top_k < vocab); if top_p < 1 keep the shortest prefix of those whose mass reaches
//   top_p * (their mass) (at least one); U = uniform(seed, index) * (mass kept) and the pick is the first
//   kept token, walking in the order below, at which the cumulative mass exceeds U (the last kept token if
//   rounding leaves none). Walk order: (p desc, index asc) when a cut was made (flag SAMPLE_SORTED_WALK,
//   set by the launcher iff 0 < top_k < vocab or top_p < 1), index order otherwise. Masses, the top-p
//   running sum included, are f64 sums of the f32 probs. The twin's `draw` must state the same rule; the
//   test names any row where it does not.
// Bit for bit with the twin: scaled, the max, exp (`expf_glibc` is glibc's expf operation for operation:
// equal to glibc 2.36's x86-64 expf on all 2^32 inputs; src/cuda/sample.rs's tests recheck the host's
// f32::exp), lse, each p_i, the draw `uniform01` (splitmix64 on u64). Not bit for bit: the order of the f64 sums (the twin sums sequentially, here per thread, then a
// fixed tree; ~1e-16 relative). So a pick can differ from the twin's only when U or the top-p target lies
// within that rounding of a cumulative-mass boundary, and lse by one f32 ulp only when ln(sum) lies within
// ~1e-15 of an f32 rounding boundary.
// Defined where the twin is not: a NaN logit reads as -inf (probability 0; the twin's lse turns NaN). A
// row with no finite maximum (all -inf/NaN, or a +inf, or an overflow of logit / T) gives its argmax
// (lowest index) and a NaN log-prob. No read or write leaves [0, vocab) of the row.
// Determinism: fixed reduction trees and no atomics, so a row's result does not depend on its batch.
#include <math.h>
#include <string.h>

#ifndef SAMPLE_THREADS  // only a host emulation of the kernel overrides it; the launcher uses 1024
#define SAMPLE_THREADS 1024
#endif
#define SAMPLE_SORTED_WALK 1u

// One row's parameters; mirrors `RowParams` in src/cuda/sample.rs (32 bytes, no padding).
struct SampleRow {
    unsigned long long seed;
    unsigned long long index;  // which generated token of its sequence this is: the draw's second input
    float temperature;         // 0 = greedy
    float top_p;               // 1 = no nucleus cut
    int top_k;                 // 0 = no top-k cut (the launcher sends 0 for top_k >= vocab)
    unsigned flags;            // SAMPLE_SORTED_WALK
};

// ---- exp and the draw, shared with the host so they can be checked there ----

// glibc's data for expf (sysdeps/ieee754/flt-32/e_exp2f_data.c): 2^(i/32) with the exponent adjusted.
#define SAMPLE_EXP2F_TABLE                                                                         \
    {0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull, \
     0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull, \
     0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull, \
     0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull, \
     0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull, \
     0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull, \
     0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull, \
     0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull}

__device__ const unsigned long long SAMPLE_EXP2F_TAB[32] = SAMPLE_EXP2F_TABLE;

// One rounding each, never contracted by the compiler (the host build of the check uses -ffp-contract=off).
__host__ __device__ __forceinline__ double s_fma(double a, double b, double c) {
#ifdef __CUDA_ARCH__
    return __fma_rn(a, b, c);
#else
    return fma(a, b, c);
#endif
}
__host__ __device__ __forceinline__ double s_mul(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
__host__ __device__ __forceinline__ double s_add(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}
__host__ __device__ __forceinline__ unsigned f2u(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
#endif
}
__host__ __device__ __forceinline__ double u2d(unsigned long long u) {
#ifdef __CUDA_ARCH__
    return __longlong_as_double((long long)u);
#else
    double d;
    memcpy(&d, &u, 8);
    return d;
#endif
}
__host__ __device__ __forceinline__ unsigned long long d2u(double d) {
#ifdef __CUDA_ARCH__
    return (unsigned long long)__double_as_longlong(d);
#else
    unsigned long long u;
    memcpy(&u, &d, 8);
    return u;
#endif
}

// glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, as its x86-64 FMA build computes it: the reduction
// InvLn2N * x + shift and the polynomial fused). Equals Rust's f32::exp on glibc x86-64, so p_i and lse
// have the twin's bits; the double result is rounded once to float, subnormals included (no -ftz).
__host__ __device__ __forceinline__ float expf_glibc(float x, const unsigned long long* tab) {
    const double inv_ln2_n = 0x1.71547652b82fep+0 * 32, shift = 0x1.8p+52;
    const double c0 = 0x1.c6af84b912394p-5 / 32 / 32 / 32, c1 = 0x1.ebfce50fac4f3p-3 / 32 / 32,
                 c2 = 0x1.62e42ff0c52d6p-1 / 32;
    const unsigned ix = f2u(x), abstop = (ix >> 20) & 0x7ff;
    if (abstop >= 0x42b) {                   // |x| >= 88 or x is NaN (0x42b = top12(88.0f))
        if (ix == 0xff800000u) return 0.0f;  // -inf
        if (abstop >= 0x7f8) return x + x;   // +inf or NaN
        if (x > 0x1.62e42ep6f) return INFINITY;
        if (x < -0x1.9fe368p6f) return 0.0f;
    }
    const double xd = (double)x;
    double kd = s_fma(inv_ln2_n, xd, shift);  // round(x * 32 / ln 2) in the low bits
    const unsigned long long ki = d2u(kd);
    kd = s_add(kd, -shift);
    const double r = s_fma(inv_ln2_n, xd, -kd);
    const double s = u2d(tab[ki & 31] + (ki << 47));
    const double z = s_fma(c0, r, c1), r2 = s_mul(r, r);
    double y = s_fma(c2, r, 1.0);
    y = s_fma(z, r2, y);
    y = s_mul(y, s);
    return (float)y;  // cvt.rn.f32.f64
}

// `mappa::sample::uniform`: a number in [0, 1) from (seed, index), splitmix64's finaliser twice.
__host__ __device__ __forceinline__ double uniform01(unsigned long long seed, unsigned long long index) {
    unsigned long long z = seed ^ ((index + 1ull) * 0x9E3779B97F4A7C15ull);
    for (int i = 0; i < 2; ++i) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
    }
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);  // 53 bits times 2^-53, both exact
}

namespace {

constexpr int WARPS = SAMPLE_THREADS / 32;
constexpr unsigned FULL = 0xffffffffu;

struct Shared {
    double d[WARPS];
    unsigned u[WARPS];
    int i[WARPS];
    float f[WARPS];
    double total;
    int found;
};

// The scaled logit, NaN read as -inf.
__device__ __forceinline__ float scaled(float logit, float t) {
    const float v = __fdiv_rn(logit, t);
    return v != v ? -INFINITY : v;
}

__device__ __forceinline__ bool is_kept(unsigned b, int i, unsigned cut_p, int cut_i) {
    return b > cut_p || (b == cut_p && i <= cut_i);
}

// ---- block reductions: every thread gets the same bits (a butterfly over identical operands) ----

// Sum of (count, mass) over the block.
__device__ __forceinline__ void block_sum(unsigned& c, double& m, Shared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        c += __shfl_xor_sync(FULL, c, o);
        m += __shfl_xor_sync(FULL, m, o);
    }
    __syncthreads();  // the slots may still be read by the previous reduction
    if (lane == 0) {
        sh.u[warp] = c;
        sh.d[warp] = m;
    }
    __syncthreads();
    c = lane < WARPS ? sh.u[lane] : 0u;
    m = lane < WARPS ? sh.d[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        c += __shfl_xor_sync(FULL, c, o);
        m += __shfl_xor_sync(FULL, m, o);
    }
}

// (v, i) becomes the better of itself and (v2, i2): larger value, then lower index (no NaN here).
__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

__device__ __forceinline__ void block_argmax(float& v, int& i, Shared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(FULL, v, o), __shfl_xor_sync(FULL, i, o));
    __syncthreads();
    if (lane == 0) {
        sh.f[warp] = v;
        sh.i[warp] = i;
    }
    __syncthreads();
    v = lane < WARPS ? sh.f[lane] : -INFINITY;
    i = lane < WARPS ? sh.i[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(FULL, v, o), __shfl_xor_sync(FULL, i, o));
}

struct MaxU {
    __device__ unsigned operator()(unsigned a, unsigned b) const { return a > b ? a : b; }
};
struct MinU {
    __device__ unsigned operator()(unsigned a, unsigned b) const { return a < b ? a : b; }
};
struct MaxI {
    __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};
struct MinI {
    __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};

template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* slot) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL, v, o));
    __syncthreads();
    if (lane == 0) slot[warp] = v;
    __syncthreads();
    v = lane < WARPS ? slot[lane] : identity;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

// Sum of v over the threads before this one (thread order). Exact for counts; for f64 masses one fixed
// association (callers do not assume it equals the previous thread's inclusive sum).
template <typename T>
__device__ __forceinline__ T block_exclusive(T v, T* slot) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T y = __shfl_up_sync(FULL, x, o);
        if (lane >= o) x += y;
    }
    T ex = __shfl_up_sync(FULL, x, 1);
    if (lane == 0) ex = T(0);
    __syncthreads();
    if (lane == 31) slot[warp] = x;
    __syncthreads();
    T base = T(0);
    for (int w = 0; w < warp; ++w) base += slot[w];
    return base + ex;
}

// Thread t's contiguous slice [begin, end) of the row, for walks in index order.
__device__ __forceinline__ void slice(int vocab, int& begin, int& end) {
    const int len = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    begin = min((int)threadIdx.x * len, vocab);
    end = min(begin + len, vocab);
}

// ---- searches over the (prob desc, index asc) order; `pb` holds the row's prob bit patterns ----

struct Tally {
    unsigned count;
    double mass;
};

// Count and mass of the kept elements (cut (cut_p, cut_i)) whose prob bits are >= t.
__device__ Tally tally(const unsigned* pb, int vocab, unsigned t, unsigned cut_p, int cut_i, Shared& sh) {
    unsigned c = 0;
    double m = 0.0;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const unsigned b = pb[i];
        if (b >= t && is_kept(b, i, cut_p, cut_i)) {
            ++c;
            m += (double)__uint_as_float(b);
        }
    }
    block_sum(c, m, sh);
    return Tally{c, m};
}

// Index of the r-th (from 1) kept element with prob bits == p, in index order; `fallback` if none.
__device__ int nth_equal(const unsigned* pb, int vocab, unsigned p, unsigned cut_p, int cut_i, unsigned r, int fallback,
                         Shared& sh) {
    int begin, end;
    slice(vocab, begin, end);
    unsigned c = 0;
    for (int i = begin; i < end; ++i) {
        const unsigned b = pb[i];
        c += (b == p && is_kept(b, i, cut_p, cut_i)) ? 1u : 0u;
    }
    if (threadIdx.x == 0) sh.found = fallback;
    const unsigned before = block_exclusive<unsigned>(c, sh.u);  // its barriers publish `found`
    if (before < r && r - before <= c) {                          // exactly one thread
        unsigned need = r - before;
        for (int i = begin; i < end; ++i) {
            const unsigned b = pb[i];
            if (b == p && is_kept(b, i, cut_p, cut_i) && --need == 0) {
                sh.found = i;
                break;
            }
        }
    }
    __syncthreads();
    const int f = sh.found;
    __syncthreads();  // `found` is written again by the next search
    return f;
}

enum Criterion { COUNT_AT_LEAST, MASS_AT_LEAST, MASS_ABOVE };

__device__ __forceinline__ bool meets(unsigned count, double mass, Criterion crit, unsigned k, double target) {
    return crit == COUNT_AT_LEAST ? count >= k : crit == MASS_AT_LEAST ? mass >= target : mass > target;
}

// The first kept element, in (prob desc, index asc) order, at which the running count or mass meets the
// criterion. `at_lo` = tally(lo) must meet it; no kept element has prob bits above `hi`.
__device__ int find_crossing(const unsigned* pb, int vocab, unsigned cut_p, int cut_i, unsigned lo, Tally at_lo,
                             unsigned hi, Criterion crit, unsigned k, double target, int fallback, unsigned& p_out,
                             Shared& sh) {
    // Invariant: tally(lo) = t_lo meets the criterion, tally(hi + 1) = t_above does not.
    Tally t_lo = at_lo, t_above = Tally{0u, 0.0};
    while (lo < hi) {
        const unsigned mid = lo + (hi - lo + 1) / 2;
        const Tally t = tally(pb, vocab, mid, cut_p, cut_i, sh);
        if (meets(t.count, t.mass, crit, k, target)) {
            lo = mid;
            t_lo = t;
        } else {
            hi = mid - 1;
            t_above = t;
        }
    }
    // The crossing is in the tie group of prob bits `lo`; t_above covers the kept elements before it.
    const unsigned in_group = t_lo.count - t_above.count;
    unsigned m;
    if (crit == COUNT_AT_LEAST) {
        m = k - t_above.count;
    } else {  // smallest m with mass(before) + m * p meeting it; the whole group if rounding says none
        const double p = (double)__uint_as_float(lo);
        unsigned a = 1, b = in_group > 0 ? in_group : 1;
        while (a < b) {
            const unsigned mid = a + (b - a) / 2;
            if (meets(0u, s_add(t_above.mass, s_mul((double)mid, p)), crit, k, target)) b = mid;
            else a = mid + 1;
        }
        m = a;
    }
    p_out = lo;
    return nth_equal(pb, vocab, lo, cut_p, cut_i, m, fallback, sh);
}

// The last kept element in (prob desc, index asc) order: the largest index among the smallest probs.
__device__ int last_kept(const unsigned* pb, int vocab, unsigned cut_p, int cut_i, int fallback, Shared& sh) {
    unsigned low = 0xffffffffu;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const unsigned b = pb[i];
        if (is_kept(b, i, cut_p, cut_i) && b < low) low = b;
    }
    low = block_reduce(low, MinU(), 0xffffffffu, sh.u);
    int last = -1;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const unsigned b = pb[i];
        if (b == low && is_kept(b, i, cut_p, cut_i)) last = i;
    }
    last = block_reduce(last, MaxI(), -1, sh.i);
    return last >= 0 ? last : fallback;
}

// The draw without a cut: the first index, in index order, at which the cumulative mass exceeds
// u * (total mass); index vocab - 1 if rounding leaves none (the twin's last candidate).
__device__ int walk_index_order(const unsigned* pb, int vocab, double u, Shared& sh) {
    int begin, end;
    slice(vocab, begin, end);
    double s = 0.0;
    for (int i = begin; i < end; ++i) s += (double)__uint_as_float(pb[i]);
    const double before = block_exclusive<double>(s, sh.d);
    const double through = before + s;  // this slice and all before it
    if (threadIdx.x == SAMPLE_THREADS - 1) sh.total = through;
    if (threadIdx.x == 0) sh.found = vocab - 1;
    __syncthreads();
    const double target = s_mul(u, sh.total);
    // The first slice whose running mass passes the target holds the pick: it walks its slice, and at its
    // end `before + acc` is `through` (same additions), so the walk finds an element.
    const int first = block_reduce(through > target ? (int)threadIdx.x : 0x7fffffff, MinI(), 0x7fffffff, sh.i);
    if ((int)threadIdx.x == first) {
        double acc = 0.0;
        for (int i = begin; i < end; ++i) {
            acc += (double)__uint_as_float(pb[i]);
            if (before + acc > target) {
                sh.found = i;
                break;
            }
        }
    }
    __syncthreads();
    const int f = sh.found;
    __syncthreads();
    return f;
}

}  // namespace

// logits: [rows, vocab] fp32; rows: one SampleRow each; probs: [rows, vocab] scratch (prob bit patterns,
// written and read by this kernel only); out: [rows, 2] = (token id, log-prob as f32 bits).
// Grid (rows), block (SAMPLE_THREADS). A launch of another block size writes id 0xffffffff (the launcher
// treats ids >= vocab as an error).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS, 1)
    sample_f32(const float* __restrict__ logits, int vocab, const SampleRow* __restrict__ rows, unsigned* probs,
               unsigned* __restrict__ out) {
    __shared__ Shared sh;
    const int row = blockIdx.x;
    unsigned* res = out + 2 * (size_t)row;
    if (blockDim.x != SAMPLE_THREADS || vocab <= 0) {
        if (threadIdx.x == 0) {
            res[0] = 0xffffffffu;
            res[1] = 0x7fc00000u;
        }
        return;
    }
    const SampleRow prm = rows[row];
    const float* x = logits + (size_t)row * vocab;
    unsigned* pb = probs + (size_t)row * vocab;
    const bool greedy = !(prm.temperature > 0.f);  // the launcher validated temperature >= 0
    const float t = greedy ? 1.f : prm.temperature;

    // Pass 1: max and argmax of the scaled logits.
    float mx = -INFINITY;
    int arg = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) better(mx, arg, scaled(x[i], t), i);
    block_argmax(mx, arg, sh);  // arg is in [0, vocab): element 0 beats the empty (-inf, INT_MAX)
    if (!(fabsf(mx) < INFINITY)) {
        if (threadIdx.x == 0) {
            res[0] = (unsigned)arg;
            res[1] = 0x7fc00000u;  // NaN: no finite maximum, no distribution
        }
        return;
    }

    // Pass 2: lse = max + ln(sum exp(scaled - max)), the sum in f64 as the twin's logsumexp.
    unsigned unused = 0;
    double sum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
        sum += (double)expf_glibc(__fsub_rn(scaled(x[i], t), mx), SAMPLE_EXP2F_TAB);
    block_sum(unused, sum, sh);  // sum >= 1: the max contributes exp(0)
    const float lse = __fadd_rn(mx, __double2float_rn(log(sum)));
    int pick = arg;
    if (!greedy) {
        // Pass 3: p_i into the scratch row (read back only after a barrier, through plain loads).
        unsigned pmax = 0;
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
            const unsigned b = __float_as_uint(expf_glibc(__fsub_rn(scaled(x[i], t), lse), SAMPLE_EXP2F_TAB));
            pb[i] = b;
            pmax = b > pmax ? b : pmax;
        }
        pmax = block_reduce(pmax, MaxU(), 0u, sh.u);
        const double u = uniform01(prm.seed, prm.index);
        if (!(prm.flags & SAMPLE_SORTED_WALK)) {
            pick = walk_index_order(pb, vocab, u, sh);
        } else {
            unsigned cut_p = 0, p;  // kept: prob bits > cut_p, or == cut_p at index <= cut_i
            int cut_i = vocab - 1;  // everything
            Tally kept = tally(pb, vocab, 0u, cut_p, cut_i, sh);
            if (prm.top_k > 0 && prm.top_k < vocab) {
                cut_i = find_crossing(pb, vocab, cut_p, cut_i, 0u, kept, pmax, COUNT_AT_LEAST, (unsigned)prm.top_k,
                                      0.0, arg, p, sh);
                cut_p = p;
                kept = tally(pb, vocab, cut_p, cut_p, cut_i, sh);
            }
            if (prm.top_p < 1.f) {
                const double target = s_mul((double)prm.top_p, kept.mass);
                cut_i = find_crossing(pb, vocab, cut_p, cut_i, cut_p, kept, pmax, MASS_AT_LEAST, 0u, target, arg, p,
                                      sh);
                cut_p = p;
                kept = tally(pb, vocab, cut_p, cut_p, cut_i, sh);
            }
            const double target = s_mul(u, kept.mass);
            if (kept.mass > target)
                pick = find_crossing(pb, vocab, cut_p, cut_i, cut_p, kept, pmax, MASS_ABOVE, 0u, target, arg, p, sh);
            else
                pick = last_kept(pb, vocab, cut_p, cut_i, arg, sh);
        }
        if (pick < 0 || pick >= vocab) pick = arg;  // unreachable; keeps the read below in bounds
    }
    if (threadIdx.x == 0) {
        res[0] = (unsigned)pick;
        res[1] = __float_as_uint(__fsub_rn(scaled(x[pick], t), lse));
    }
}

// lm_head.cu: the fused LM head + token log-prob + clipped policy-gradient loss, without a [T x V] logits
// tensor. The host (src/cuda/lm_head.rs) walks the vocabulary in chunks: cuBLASLt writes one chunk's
// [T, rows] fp32 logits into a scratch buffer, `lm_head_lse_chunk` folds it into each position's online
// state (running max, sum of exponentials, their dot with the logits for the entropy, the target's logit),
// and `lm_head_lse_finish` turns the state into log-sum-exp, log-prob and entropy. `pg_loss_terms` gives
// each token's loss and d loss / d logp, `pg_loss_sum` their totals. The backward pass recomputes each
// chunk's logits, and `lm_head_dlogits` writes d logits (bf16) for the two products d(hidden) +=
// dlogits W_chunk and d(W_chunk) += dlogits^T hidden.
// CPU twins: cpu::logprob::token_logprobs / token_logprobs_backward and rl::loss::pg_loss; test:
// tests/cuda_train.rs `lm_head_loss_matches_cpu`.
#include "common.cuh"

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Max over the block; every thread gets it. `scratch` holds 32 floats.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int nwarps = (blockDim.x + 31) >> 5;
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// One position per block. state[4 t..]: max, sum of exp(l - max), sum of exp(l - max) l, target logit,
// all of l = logits * inv_temp; max starts at -inf (the host fills it). The exponentials are fp32 (each is
// at most 1), their block sums and the state f64, as the CPU twin keeps its state.
extern "C" __global__ void __launch_bounds__(256)
    lm_head_lse_chunk(double* __restrict__ state, const float* __restrict__ logits, int rows, int v0,
                      const unsigned* __restrict__ targets, float inv_temp) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    const float* row = logits + (size_t)blockIdx.x * rows;
    double* s = state + 4 * (size_t)blockIdx.x;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < rows; j += blockDim.x) mx = fmaxf(mx, row[j] * inv_temp);
    const double old_max = s[0];
    const double m = fmax(old_max, (double)block_max(mx, fscratch));
    float sum = 0.f, dot = 0.f;
    for (int j = threadIdx.x; j < rows; j += blockDim.x) {
        const float l = row[j] * inv_temp, e = expf(l - (float)m);
        sum += e;
        dot += e * l;
    }
    const double chunk_sum = block_sum_f64(sum, dscratch), chunk_dot = block_sum_f64(dot, dscratch);
    if (threadIdx.x == 0) {
        const double rescale = exp(old_max - m);  // 0 on the first chunk (old_max = -inf)
        s[0] = m;
        s[1] = s[1] * rescale + chunk_sum;
        s[2] = s[2] * rescale + chunk_dot;
        const long long j = (long long)targets[blockIdx.x] - v0;
        if (j >= 0 && j < rows) s[3] = (double)(row[j] * inv_temp);
    }
}

// lse = max + ln(sum), logp = target - lse, entropy = lse - dot / sum (entropy may be null).
extern "C" __global__ void __launch_bounds__(256)
    lm_head_lse_finish(const double* __restrict__ state, int t, float* __restrict__ lse, float* __restrict__ logp,
                       float* __restrict__ entropy) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= t) return;
    const double* s = state + 4 * (size_t)i;
    const double l = s[0] + log(s[1]);
    lse[i] = (float)l;
    logp[i] = (float)(s[3] - l);
    if (entropy) entropy[i] = (float)(l - s[2] / s[1]);
}

// Each token's term, for every token with weight > 0 (its share of the aggregated loss; 0 means masked
// out), in f64 as the CPU twin:
//   ratio = exp(logp - old); loss = -min(ratio A, clip(ratio) A) [dual clip: at most -c A when A < 0]
//   [+ kl_coef k3(logp - ref)]; dlogp = weight * d loss / d logp.
// terms[3 i..] = (weight * loss, clipped 0/1, old - logp), zeros for a masked token; `pg_loss_sum` adds them.
// dual_clip <= 0 and kl_coef == 0 switch those terms off (ref may then be null).
extern "C" __global__ void __launch_bounds__(256)
    pg_loss_terms(float* __restrict__ dlogp, double* __restrict__ terms, const float* __restrict__ logp,
                  const float* __restrict__ old, const float* __restrict__ ref, const float* __restrict__ adv,
                  const float* __restrict__ weight, int t, float eps_low, float eps_high, float dual_clip,
                  float kl_coef) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= t) return;
    double* out = terms + 3 * (size_t)i;
    const double w = weight[i];
    if (w <= 0.0) {
        dlogp[i] = 0.f;
        out[0] = out[1] = out[2] = 0.0;
        return;
    }
    const double lo = 1.0 - (double)eps_low, hi = 1.0 + (double)eps_high;
    const double log_ratio = (double)logp[i] - (double)old[i], a = adv[i], ratio = exp(log_ratio);
    double l, g, clipped = 1.0;
    if (dual_clip > 0.f && a < 0.0 && ratio > (double)dual_clip) {
        l = -(double)dual_clip * a;
        g = 0.0;
    } else if ((a > 0.0 && ratio > hi) || (a < 0.0 && ratio < lo)) {
        l = -fmin(fmax(ratio, lo), hi) * a;
        g = 0.0;
    } else {
        l = g = -ratio * a;
        clipped = 0.0;
    }
    if (kl_coef != 0.f) {
        const double d = (double)logp[i] - (double)ref[i];
        l += (double)kl_coef * (exp(-d) - 1.0 + d);
        g -= (double)kl_coef * expm1(-d);
    }
    dlogp[i] = (float)(w * g);
    out[0] = w * l;
    out[1] = clipped;
    out[2] = -log_ratio;
}

// One block: stats[k] = sum over tokens of terms[3 i + k], in fixed strides and a fixed tree
// (deterministic): the loss, the clipped tokens, the sum of old - logp.
extern "C" __global__ void __launch_bounds__(1024)
    pg_loss_sum(double* __restrict__ stats, const double* __restrict__ terms, int t) {
    __shared__ double scratch[32];
    for (int k = 0; k < 3; k++) {
        double s = 0.0;
        for (int i = threadIdx.x; i < t; i += blockDim.x) s += terms[3 * (size_t)i + k];
        s = block_sum_f64(s, scratch);
        if (threadIdx.x == 0) stats[k] = s;
    }
}

// One position per block: dlogits[t, j] = dlogp[t] / T (onehot(target)[j] - exp(l[t, j] - lse[t])), with
// l = logits * inv_temp, in bf16 for the two products that follow.
extern "C" __global__ void __launch_bounds__(256)
    lm_head_dlogits(bf16* __restrict__ dlogits, const float* __restrict__ logits, int rows, int v0,
                    const unsigned* __restrict__ targets, const float* __restrict__ lse,
                    const float* __restrict__ dlogp, float inv_temp) {
    const size_t off = (size_t)blockIdx.x * rows;
    const float g = dlogp[blockIdx.x] * inv_temp, l = lse[blockIdx.x];
    const long long target = (long long)targets[blockIdx.x] - v0;
    for (int j = threadIdx.x; j < rows; j += blockDim.x) {
        float x = g == 0.f ? 0.f : -g * expf(logits[off + j] * inv_temp - l);
        if (j == target) x += g;
        dlogits[off + j] = __float2bfloat16(x);
    }
}

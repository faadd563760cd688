//! Choosing the next token from logits: greedy at temperature 0, otherwise temperature, then top-k, then
//! top-p (nucleus), as transformers orders them. Draws are a function of (seed, token index), so runs are
//! reproducible and independent of batching.
//! Every choice also returns its log-probability under softmax(logits / T) before truncation (T = 1 when
//! greedy): the rollout policy's log-prob that training needs.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("temperature must be a finite number >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) || self.top_p.is_nan() {
            anyhow::bail!("top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

/// The chosen token and its log-probability, for the `index`-th token a sequence generates.
///
/// The random draw is a pure function of (seed, index) ([`uniform`]), not a stateful stream: a sequence's
/// tokens do not depend on what else shares its batch, on a preemption that recomputes it, or on which
/// backend runs it (the CUDA sampler draws the same numbers).
pub fn sample(logits: &[f32], params: &SamplingParams, index: u64) -> (u32, f32) {
    let t = if params.temperature > 0.0 { params.temperature } else { 1.0 };
    let scaled: Vec<f32> = logits.iter().map(|&l| l / t).collect();
    let lse = crate::cpu::ops::logsumexp(&scaled);
    let pick = if params.temperature == 0.0 { argmax(&scaled) } else { draw(&scaled, lse, params, index) };
    (pick as u32, scaled[pick] - lse)
}

/// A uniform number in [0, 1) from (seed, index): splitmix64's finaliser over the seed and the index
/// spread by the golden ratio, 53 bits of it.
pub fn uniform(seed: u64, index: u64) -> f64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn draw(scaled: &[f32], lse: f32, p: &SamplingParams, index: u64) -> usize {
    let mut cand: Vec<(usize, f32)> = scaled.iter().map(|&l| (l - lse).exp()).enumerate().collect();
    let by_prob = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let cut_k = p.top_k > 0 && p.top_k < cand.len();
    if cut_k {
        cand.select_nth_unstable_by(p.top_k - 1, by_prob);
        cand.truncate(p.top_k);
    }
    // The walk goes by (prob desc, index asc) whenever a cut is made (select_nth leaves the kept tokens in an
    // unspecified order), in index order otherwise; kernels/sample.cu walks the same way.
    if cut_k || p.top_p < 1.0 {
        cand.sort_unstable_by(by_prob);
    }
    if p.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (always at least one token). Summed in f64: an f32
        // running sum over a 152k vocabulary drifts by ~1e-4 of the mass and moves the cut.
        let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
        let mut acc = 0.0f64;
        let keep = cand.iter().position(|c| {
            acc += c.1 as f64;
            acc >= p.top_p as f64 * total
        });
        cand.truncate(keep.map_or(cand.len(), |i| i + 1));
    }
    let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
    let mut u = uniform(p.seed, index) * total;
    for &(id, prob) in &cand {
        u -= prob as f64;
        if u < 0.0 {
            return id;
        }
    }
    cand.last().map_or(0, |c| c.0) // rounding left u at ~0: the last candidate
}

/// Index of the largest value; the lowest index wins ties, as torch.argmax.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

//! Choosing the next token from logits: greedy at temperature 0, otherwise temperature, then top-k, then
//! top-p (nucleus), as transformers orders them. A seeded ChaCha RNG per sequence makes runs reproducible.
//! Every choice also returns its log-probability under softmax(logits / T) before truncation (T = 1 when
//! greedy): the rollout policy's log-prob that training needs.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler { params, rng: ChaCha8Rng::seed_from_u64(params.seed) }
    }

    /// The chosen token and its log-probability.
    pub fn sample(&mut self, logits: &[f32]) -> (u32, f32) {
        let p = self.params;
        let t = if p.temperature > 0.0 { p.temperature } else { 1.0 };
        let scaled: Vec<f32> = logits.iter().map(|&l| l / t).collect();
        let lse = crate::cpu::ops::logsumexp(&scaled);
        let pick = if p.temperature == 0.0 { argmax(&scaled) } else { self.draw(&scaled, lse) };
        (pick as u32, scaled[pick] - lse)
    }

    fn draw(&mut self, scaled: &[f32], lse: f32) -> usize {
        let p = self.params;
        let mut cand: Vec<(usize, f32)> = scaled.iter().map(|&l| (l - lse).exp()).enumerate().collect();
        let by_prob = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_prob);
            cand.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            cand.sort_unstable_by(by_prob);
            // Keep the smallest prefix whose mass reaches top_p (always at least one token).
            let total: f32 = cand.iter().map(|c| c.1).sum();
            let mut acc = 0.0;
            let keep = cand.iter().position(|c| {
                acc += c.1;
                acc >= p.top_p * total
            });
            cand.truncate(keep.map_or(cand.len(), |i| i + 1));
        }
        let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
        let mut u = self.rng.random::<f64>() * total;
        for &(id, prob) in &cand {
            u -= prob as f64;
            if u < 0.0 {
                return id;
            }
        }
        cand.last().map_or(0, |c| c.0) // rounding left u at ~0: the last candidate
    }
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

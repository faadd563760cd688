//! Choosing the next token from logits: greedy at temperature 0, otherwise temperature, then top-k, then
//! top-p (nucleus), as transformers orders them. Draws are a function of (seed, token index), so runs are
//! reproducible and independent of batching.
//! Every choice also returns its log-probability under softmax(logits / T) before truncation (T = 1 when
//! greedy): the rollout policy's log-prob that training needs. A sequence may also ask for the
//! `top_logprobs` most likely tokens at each step ([`sample_with_top`], [`logprob_and_top`]): they come from that same distribution,
//! computed by the same expression, so the sampled token's log-prob equals its own entry among them bit for
//! bit. At T = 1 (OpenAI's default) and when greedy, that is the model's raw log-softmax, which is what
//! OpenAI reports; at another temperature the log-probs (sampled and alternatives alike) are those of the
//! tempered distribution the token was drawn from.
//!
//! A constrained sequence (structured outputs, `crate::constrain`) samples through [`sample_masked`]: the
//! tokens its [`TokenMask`] forbids are dropped before temperature, top-k and top-p, exactly as if their
//! logits were -inf, and its log-prob and alternatives are those of that masked distribution (see there).
//! An unconstrained sequence never goes through it, so nothing about it changes.

use crate::model::Sampled;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    pub seed: u64,
    /// Alternatives to report with each token: its `top_logprobs` most likely tokens with their log-probs
    /// (0: none; at most [`MAX_TOP_LOGPROBS`]). They change nothing about the draw.
    pub top_logprobs: usize,
}

/// Most alternatives a token may come with (OpenAI's bound on `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, top_logprobs: 0 }
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
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            anyhow::bail!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}", self.top_logprobs);
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
    let s = sample_with_top(logits, params, index);
    (s.id, s.logprob)
}

/// [`sample`], with the `params.top_logprobs` most likely tokens when asked for.
pub fn sample_with_top(logits: &[f32], params: &SamplingParams, index: u64) -> Sampled {
    let (scaled, lse) = tempered(logits, params.temperature);
    let pick = if params.temperature == 0.0 { argmax(&scaled) } else { draw(&scaled, lse, params, index) };
    Sampled { id: pick as u32, logprob: scaled[pick] - lse, top: top_of(&scaled, lse, params.top_logprobs) }
}

/// [`sample_with_top`] over the tokens `allowed` lets through (all of them when None): the draw is from
/// softmax(logits / T) renormalised over the allowed tokens, as if every other logit were -inf, with top-k
/// and top-p cut within them; greedy takes the most likely allowed token (the lowest id on ties).
///
/// The log-prob and the alternatives are those of that masked distribution, the one the token was drawn
/// from, as everywhere in this module: the token's log-prob stays its own entry's among the alternatives,
/// the alternatives are tokens that could have been drawn, and a token the constraint forces has log-prob
/// 0. (The model's unmasked log-prob of the same token is lower by the log of the mass the mask removed.)
/// Training rollouts are never constrained, so the policy log-probs training uses are untouched.
///
/// The allowed tokens are gathered in id order and sampled with [`sample_with_top`], so the walk, ties and
/// the seeded draw follow the same rules as an unconstrained sample. Errors when no token of the
/// vocabulary (`logits.len()`) is allowed.
pub fn sample_masked(
    logits: &[f32],
    params: &SamplingParams,
    index: u64,
    allowed: Option<&TokenMask>,
) -> anyhow::Result<Sampled> {
    let Some(mask) = allowed else { return Ok(sample_with_top(logits, params, index)) };
    let ids: Vec<u32> = mask.ids().take_while(|&id| (id as usize) < logits.len()).collect();
    anyhow::ensure!(!ids.is_empty(), "the constraint allows no token of the {}-token vocabulary", logits.len());
    let kept: Vec<f32> = ids.iter().map(|&id| logits[id as usize]).collect();
    let s = sample_with_top(&kept, params, index);
    let top = s.top.into_iter().map(|(j, lp)| (ids[j as usize], lp)).collect();
    Ok(Sampled { id: ids[s.id as usize], logprob: s.logprob, top })
}

/// The tokens a constrained sequence may sample next: one bit per vocabulary id (bit `id % 32` of word
/// `id / 32`, llguidance's layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
    len: usize,
}

impl TokenMask {
    /// A mask over `len` ids that allows none.
    pub fn none(len: usize) -> TokenMask {
        TokenMask { words: vec![0; len.div_ceil(32)], len }
    }

    /// A mask over `len` ids from its words; bits past `len` are dropped, missing words allow nothing.
    pub fn from_words(words: &[u32], len: usize) -> TokenMask {
        let mut m = TokenMask::none(len);
        for (w, &v) in m.words.iter_mut().zip(words) {
            *w = v;
        }
        if len % 32 != 0 {
            if let Some(last) = m.words.last_mut() {
                *last &= (1u32 << (len % 32)) - 1;
            }
        }
        m
    }

    /// A mask over `len` ids that allows `ids` (those below `len`).
    pub fn from_ids(len: usize, ids: impl IntoIterator<Item = u32>) -> TokenMask {
        let mut m = TokenMask::none(len);
        ids.into_iter().for_each(|id| m.allow(id));
        m
    }

    /// The number of ids the mask covers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Allows `id`; ids past the mask's length are ignored.
    pub fn allow(&mut self, id: u32) {
        if (id as usize) < self.len {
            self.words[id as usize / 32] |= 1 << (id % 32);
        }
    }

    pub fn disallow(&mut self, id: u32) {
        if (id as usize) < self.len {
            self.words[id as usize / 32] &= !(1 << (id % 32));
        }
    }

    pub fn allows(&self, id: u32) -> bool {
        (id as usize) < self.len && self.words[id as usize / 32] & (1 << (id % 32)) != 0
    }

    /// How many ids are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// No id is allowed.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The allowed ids, in increasing order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros();
                    w &= w - 1;
                    i as u32 * 32 + bit
                })
            })
        })
    }
}

/// The log-prob of token `id` and the `k` most likely tokens with theirs (most likely first, ties by the
/// lower id), under softmax(logits / T) with T = 1 when `temperature` is 0: the values [`sample`] gives.
pub fn logprob_and_top(logits: &[f32], temperature: f32, id: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let (scaled, lse) = tempered(logits, temperature);
    (scaled[id as usize] - lse, top_of(&scaled, lse, k))
}

/// logits / T (T = 1 when greedy) and their log-sum-exp.
fn tempered(logits: &[f32], temperature: f32) -> (Vec<f32>, f32) {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let scaled: Vec<f32> = logits.iter().map(|&l| l / t).collect();
    let lse = crate::cpu::ops::logsumexp(&scaled);
    (scaled, lse)
}

fn top_of(scaled: &[f32], lse: f32, k: usize) -> Vec<(u32, f32)> {
    let mut top = TopK::new(k);
    for (id, &l) in scaled.iter().enumerate() {
        top.offer(id as u32, l);
    }
    top.into_sorted().into_iter().map(|(id, l)| (id, l - lse)).collect()
}

/// The `k` largest values offered, kept sorted (value desc, then the order offered): offered in id order,
/// ties go to the lower id. NaN is never kept. O(k) per kept value, nothing for the rest.
#[derive(Clone, Debug)]
pub struct TopK<T> {
    k: usize,
    kept: Vec<(u32, T)>,
}

impl<T: PartialOrd + Copy> TopK<T> {
    pub fn new(k: usize) -> TopK<T> {
        TopK { k, kept: Vec::with_capacity(k) }
    }

    pub fn offer(&mut self, id: u32, value: T) {
        if self.k == 0 || (self.kept.len() == self.k && !(value > self.kept[self.k - 1].1)) {
            return;
        }
        if value.partial_cmp(&value).is_none() {
            return; // NaN
        }
        let at = self.kept.partition_point(|&(_, v)| v >= value);
        if self.kept.len() == self.k {
            self.kept.pop();
        }
        self.kept.insert(at, (id, value));
    }

    pub fn into_sorted(self) -> Vec<(u32, T)> {
        self.kept
    }
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

//! The decoder's training pass on the CPU: a forward over packed sequences that records what the backward
//! needs (a `Tape`), the log-probs of chosen target tokens through the fused LM head (`logprob`), and the
//! backward that turns d loss / d logp back into the gradient of every parameter.
//!
//! Packing: several sequences laid end to end (`seq_lens`), each with positions from 0 and causal attention
//! that never crosses sequences, so one pass scores many samples of different lengths with no padding.
//! Gradients land in a flat buffer with the arena's layout (`CpuModel::param_len`), accumulated (+=), so
//! micro-batches add up. With `Tape::recompute`, only each layer's input is kept and the rest of the layer is
//! recomputed during the backward: memory per token drops from ~9 hidden-sized vectors per layer to one.
use super::grad::{
    attention_backward, attention_packed_forward, bias_backward, embedding_backward, linear_backward, rmsnorm_backward,
    rope_backward, swiglu_backward, Packed,
};
use super::linear::linear;
use super::logprob::{token_logprobs, token_logprobs_backward, token_top_logprobs};
use super::model::{AttnIn, CpuModel, Layer};
use super::ops::rmsnorm;
use crate::sample::MAX_TOP_LOGPROBS;
use anyhow::{ensure, Result};

/// Vocabulary rows scored per GEMM in the fused LM head.
pub const VOCAB_CHUNK: usize = 4096;

/// What the forward of one layer computed, for its backward.
struct LayerActs {
    /// The layer's input (residual stream).
    x: Vec<f32>,
    a: AttnIn,
    /// Attention output before o_proj.
    att: Vec<f32>,
    /// Residual stream after attention (the MLP's input).
    x_mid: Vec<f32>,
    /// [normed x_mid, gate_up, act].
    mlp: [Vec<f32>; 3],
}

/// A layer's saved state: everything, or only its input (recomputed in the backward).
enum Saved {
    Full(Box<LayerActs>),
    Input(Vec<f32>),
}

/// The record of one training forward.
pub struct Tape {
    tokens: Vec<u32>,
    seq_lens: Vec<usize>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    layers: Vec<Saved>,
    /// Residual stream after the last layer (input of the final norm).
    x_last: Vec<f32>,
    /// Final normed hidden states `[T, hidden]`: the LM head's input.
    pub hidden: Vec<f32>,
}

impl Tape {
    /// Packed positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Per position, the token it predicts: position i of a sequence scores token i + 1 of that sequence. The
/// scored positions are given as packed indices; each must have a next token in its own sequence.
pub(crate) fn targets(tokens: &[u32], seq_lens: &[usize], positions: &[usize]) -> Result<Vec<u32>> {
    let mut last = vec![false; tokens.len()];
    let mut end = 0;
    for &len in seq_lens {
        end += len;
        if len > 0 {
            last[end - 1] = true;
        }
    }
    positions
        .iter()
        .map(|&p| {
            ensure!(p < tokens.len(), "scored position {p} is outside the batch of {} tokens", tokens.len());
            ensure!(!last[p], "scored position {p} is the last of its sequence: it has no next token");
            Ok(tokens[p + 1])
        })
        .collect()
}

impl CpuModel {
    /// Rope rows for packed sequences: every sequence starts at position 0.
    fn packed_rope(&self, seq_lens: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &len in seq_lens {
            let (c, s) = self.rope.table(0, len);
            cos.extend(c);
            sin.extend(s);
        }
        (cos, sin)
    }

    /// One layer forward over packed sequences: returns its activations; `x` becomes the layer's output.
    fn layer_train(&self, layer: &Layer, x: &mut [f32], seq_lens: &[usize], cos: &[f32], sin: &[f32]) -> LayerActs {
        let c = &self.config;
        let (t, d, qd) = (x.len() / c.hidden_size, c.hidden_size, c.q_dim());
        let a = self.attn_in(layer, x, cos, sin, true);
        let mut att = vec![0f32; t * qd];
        let p = Packed { seq_lens, n_heads: c.num_heads, n_kv: c.num_kv_heads, hd: c.head_dim };
        attention_packed_forward(&a.q, &a.k, &a.v, p, &mut att);
        let input = x.to_vec();
        linear(x, &att, &self.arena[layer.wo.clone()], t, qd, d, true);
        let x_mid = x.to_vec();
        let mlp = self.mlp(layer, x);
        LayerActs { x: input, a, att, x_mid, mlp }
    }

    /// The training forward over packed sequences (`seq_lens` sum to `tokens.len()`), keeping a tape for
    /// `backward`. `recompute` keeps only layer inputs.
    pub fn forward_train(&self, tokens: &[u32], seq_lens: &[usize], recompute: bool) -> Result<Tape> {
        crate::model::check_tokens(&self.config, tokens)?;
        let total: usize = seq_lens.iter().sum();
        ensure!(total == tokens.len(), "sequence lengths sum to {total}, but {} tokens were given", tokens.len());
        for &len in seq_lens {
            crate::model::check_end(&self.config, len)?;
        }
        let c = &self.config;
        let (cos, sin) = self.packed_rope(seq_lens);
        let mut x = self.embed(tokens);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let acts = self.layer_train(layer, &mut x, seq_lens, &cos, &sin);
            layers.push(match recompute {
                true => Saved::Input(acts.x),
                false => Saved::Full(Box::new(acts)),
            });
        }
        let mut hidden = vec![0f32; x.len()];
        rmsnorm(&mut hidden, &x, &self.arena[self.norm.clone()], c.rms_norm_eps);
        Ok(Tape { tokens: tokens.to_vec(), seq_lens: seq_lens.to_vec(), cos, sin, layers, x_last: x, hidden })
    }

    /// log π(next token) at the packed `positions` of a tape, under softmax(logits / temperature).
    pub fn score(&self, tape: &Tape, positions: &[usize], temperature: f32) -> Result<Scores> {
        let (d, v) = (self.config.hidden_size, self.config.vocab_size);
        let targets = targets(&tape.tokens, &tape.seq_lens, positions)?;
        let h = gather_rows(&tape.hidden, d, positions);
        let n = positions.len();
        let out = token_logprobs(&h, &self.arena[self.head()], &targets, n, d, v, temperature, VOCAB_CHUNK, false)?;
        Ok(Scores { logp: out.logp, lse: out.lse, h, targets, positions: positions.to_vec(), temperature })
    }

    /// log π(next token) at `positions` of packed sequences, without keeping more than layer inputs: the
    /// old-policy and reference log-probs.
    pub fn sequence_logprobs(
        &self,
        tokens: &[u32],
        seq_lens: &[usize],
        positions: &[usize],
        temperature: f32,
    ) -> Result<Vec<f32>> {
        let tape = self.forward_train(tokens, seq_lens, true)?;
        Ok(self.score(&tape, positions, temperature)?.logp)
    }

    /// `sequence_logprobs` with the `k` most likely next tokens and their log-probs at each position, from
    /// the same forward pass and the same log-sum-exp (`logprob::token_top_logprobs`).
    pub fn sequence_top_logprobs(
        &self,
        tokens: &[u32],
        seq_lens: &[usize],
        positions: &[usize],
        temperature: f32,
        k: usize,
    ) -> Result<(Vec<f32>, Vec<Vec<(u32, f32)>>)> {
        ensure!(k <= MAX_TOP_LOGPROBS, "at most {MAX_TOP_LOGPROBS} top log-probs, asked for {k}");
        let tape = self.forward_train(tokens, seq_lens, true)?;
        let (d, v) = (self.config.hidden_size, self.config.vocab_size);
        let targets = targets(&tape.tokens, &tape.seq_lens, positions)?;
        let h = gather_rows(&tape.hidden, d, positions);
        let head = &self.arena[self.head()];
        let (out, top) = token_top_logprobs(&h, head, &targets, positions.len(), d, v, temperature, VOCAB_CHUNK, k)?;
        Ok((out.logp, top))
    }

    /// Adds to `grads` (the arena's layout) the gradient of sum_i dlogp_i * logp_i, where logp_i is
    /// `scores.logp[i]`, computed by `score` on this `tape`.
    pub fn backward(&self, tape: Tape, scores: &Scores, dlogp: &[f32], grads: &mut [f32]) -> Result<()> {
        let c = &self.config;
        let (d, v, t) = (c.hidden_size, c.vocab_size, tape.len());
        let n = scores.positions.len();
        ensure!(
            grads.len() == self.param_len(),
            "gradient buffer has {} floats, the model {}",
            grads.len(),
            self.param_len()
        );
        ensure!(dlogp.len() == n, "{} gradients for {n} scored positions", dlogp.len());
        let head = self.head();
        let dh_sel = token_logprobs_backward(
            &scores.h,
            &self.arena[head.clone()],
            &scores.targets,
            &scores.lse,
            dlogp,
            n,
            d,
            v,
            scores.temperature,
            VOCAB_CHUNK,
            &mut grads[head],
        )?;
        let mut d_hidden = vec![0f32; t * d];
        for (&p, g) in scores.positions.iter().zip(dh_sel.chunks_exact(d)) {
            d_hidden[p * d..][..d].iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        let mut dx = vec![0f32; t * d];
        rmsnorm_backward(
            &d_hidden,
            &tape.x_last,
            &self.arena[self.norm.clone()],
            c.rms_norm_eps,
            &mut dx,
            &mut grads[self.norm.clone()],
        );
        for (layer, saved) in self.layers.iter().zip(tape.layers).rev() {
            let acts = match saved {
                Saved::Full(acts) => *acts,
                Saved::Input(mut x) => self.layer_train(layer, &mut x, &tape.seq_lens, &tape.cos, &tape.sin),
            };
            dx = self.layer_backward(layer, acts, dx, &tape.seq_lens, &tape.cos, &tape.sin, grads);
        }
        embedding_backward(&dx, &tape.tokens, d, &mut grads[self.embed.clone()]);
        Ok(())
    }

    /// Backward of one layer: takes d(layer output), returns d(layer input), accumulates weight gradients.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        layer: &Layer,
        acts: LayerActs,
        d_out: Vec<f32>,
        seq_lens: &[usize],
        cos: &[f32],
        sin: &[f32],
        grads: &mut [f32],
    ) -> Vec<f32> {
        let c = &self.config;
        let (d, f, qd, kvd, hd, eps) =
            (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.head_dim, c.rms_norm_eps);
        let (t, w) = (d_out.len() / d, &self.arena);
        let [h2, gate_up, act] = &acts.mlp;

        // MLP: x_out = x_mid + down(swiglu(gate_up(rmsnorm(x_mid)))).
        let mut d_act = vec![0f32; t * f];
        linear_backward(&d_out, act, &w[layer.w_down.clone()], t, f, d, &mut d_act, &mut grads[layer.w_down.clone()]);
        let mut d_gate_up = vec![0f32; t * 2 * f];
        swiglu_backward(&d_act, gate_up, f, &mut d_gate_up);
        let mut d_h2 = vec![0f32; t * d];
        linear_backward(
            &d_gate_up,
            h2,
            &w[layer.w_gate_up.clone()],
            t,
            d,
            2 * f,
            &mut d_h2,
            &mut grads[layer.w_gate_up.clone()],
        );
        let mut d_mid = vec![0f32; t * d];
        rmsnorm_backward(
            &d_h2,
            &acts.x_mid,
            &w[layer.mlp_norm.clone()],
            eps,
            &mut d_mid,
            &mut grads[layer.mlp_norm.clone()],
        );
        d_mid.iter_mut().zip(&d_out).for_each(|(a, b)| *a += b);

        // Attention: x_mid = x + o_proj(attn(q, k, v)).
        let mut d_att = vec![0f32; t * qd];
        linear_backward(&d_mid, &acts.att, &w[layer.wo.clone()], t, qd, d, &mut d_att, &mut grads[layer.wo.clone()]);
        let a = &acts.a;
        let (mut dq, mut dk, mut dv) = (vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        let p = Packed { seq_lens, n_heads: c.num_heads, n_kv: c.num_kv_heads, hd };
        attention_backward(&d_att, &a.q, &a.k, &a.v, p, &mut dq, &mut dk, &mut dv);
        let half = hd / 2;
        for i in 0..t {
            let (cs, sn) = (&cos[i * half..][..half], &sin[i * half..][..half]);
            rope_backward(&mut dq[i * qd..][..qd], cs, sn);
            rope_backward(&mut dk[i * kvd..][..kvd], cs, sn);
        }
        if let (Some([nq, nk]), Some((q_raw, k_raw))) = (&layer.qk_norm, &a.qk_raw) {
            let dq_norm = std::mem::take(&mut dq);
            dq = vec![0f32; t * qd];
            rmsnorm_backward(&dq_norm, q_raw, &w[nq.clone()], eps, &mut dq, &mut grads[nq.clone()]);
            let dk_norm = std::mem::take(&mut dk);
            dk = vec![0f32; t * kvd];
            rmsnorm_backward(&dk_norm, k_raw, &w[nk.clone()], eps, &mut dk, &mut grads[nk.clone()]);
        }
        let qkvd = qd + 2 * kvd;
        let mut d_qkv = Vec::with_capacity(t * qkvd);
        for i in 0..t {
            d_qkv.extend_from_slice(&dq[i * qd..][..qd]);
            d_qkv.extend_from_slice(&dk[i * kvd..][..kvd]);
            d_qkv.extend_from_slice(&dv[i * kvd..][..kvd]);
        }
        if let Some(b) = &layer.b_qkv {
            bias_backward(&d_qkv, t, qkvd, &mut grads[b.clone()]);
        }
        let mut d_h = vec![0f32; t * d];
        linear_backward(&d_qkv, &a.h, &w[layer.w_qkv.clone()], t, d, qkvd, &mut d_h, &mut grads[layer.w_qkv.clone()]);
        let mut dx = vec![0f32; t * d];
        rmsnorm_backward(&d_h, &acts.x, &w[layer.attn_norm.clone()], eps, &mut dx, &mut grads[layer.attn_norm.clone()]);
        dx.iter_mut().zip(&d_mid).for_each(|(a, b)| *a += b);
        dx
    }
}

/// Log-probs of chosen tokens from one tape, with what their backward needs.
pub struct Scores {
    pub logp: Vec<f32>,
    lse: Vec<f32>,
    /// The scored positions' final hidden states `[n, hidden]`.
    h: Vec<f32>,
    targets: Vec<u32>,
    positions: Vec<usize>,
    temperature: f32,
}

/// Rows `positions` of a `[T, width]` matrix.
fn gather_rows(m: &[f32], width: usize, positions: &[usize]) -> Vec<f32> {
    positions.iter().flat_map(|&p| &m[p * width..][..width]).copied().collect()
}

//! A coach run by the engine itself: a local model (any file `mappa::loader::load` reads) answers the coach
//! prompt greedily (or at `temperature`), so a run needs no API key and no network. A step's actions are
//! answered as one continuous batch of the engine ([`CoachBackend::reply_all`]).
//!
//! `reply_prefix` starts the coach's reply with fixed text the model continues, e.g. `PROCESS_SCORE:` for
//! a model too small to follow the answer format by itself. The prefix is part of the returned reply, so
//! the strict parser still checks the whole answer, and the exchange is logged as it happened.
//!
//! [`LocalScoring::Sampled`] replies are constrained (llguidance, `crate::constrain`) to end in a valid score
//! line, so the format cannot fail: after a prefix that ends in `PROCESS_SCORE:` the model may write only a
//! score (0-10); otherwise up to `max_tokens - 24` characters of analysis, then `\nPROCESS_SCORE: ` and a
//! score, which always fits the budget (a token holds at least one character).
//!
//! [`LocalScoring::Expected`] does not sample a score: it reads the coach's next-token probabilities after
//! the prefix and replies with the probability-weighted mean over the scores 0..10 (G-Eval's weighting). A
//! small coach then never fails the format, and its score is graded instead of a coin flip between digits.
//! Two requests per prompt, in one batch: the prompt (the first digit's distribution) and the prompt plus
//! "1" (whether a "1" goes on to "10"). Each digit's probability sums the alternatives whose text is that
//! digit (with or without a leading space); P(10) = P(1) P(0 | 1), P(1) = P(1) P(no digit | 1), and 11..19
//! are not scores. Unless at least half the probability lies on the scores, the reply is an error and the
//! action goes unscored. The reply shows the distribution and ends in a `PROCESS_SCORE:` line for the
//! parser.
use super::{CoachBackend, CoachRequest};
use crate::constrain::{Grammar, Grammars};
use crate::engine::{generate_batch_constrained, Constraints, EngineConfig, Generation, Request};
use crate::model::{Backend, Model};
use crate::sample::{SamplingParams, MAX_TOP_LOGPROBS};
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// How a local coach turns its reply into a score (`coach.score` in a run's config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalScoring {
    /// The score the coach writes (sampled at `temperature`), parsed from its reply.
    #[default]
    Sampled,
    /// The probability-weighted mean over the scores 0..10 (module docs).
    Expected,
}

/// Least probability the scores 0..10 must hold together for an expected score.
const MIN_SCORE_MASS: f64 = 0.5;
/// Tokens a sampled reply keeps for its score line after free analysis ("\nPROCESS_SCORE: 10" is 18
/// characters, so at most 18 tokens).
const SCORE_LINE_TOKENS: usize = 24;

pub struct LocalCoach {
    model: Box<dyn Model>,
    tok: Tokenizer,
    max_tokens: usize,
    temperature: f32,
    reply_prefix: Option<String>,
    scoring: LocalScoring,
    /// What a sampled reply must be (module docs); None for expected scores.
    grammar: Option<Grammar>,
}

impl LocalCoach {
    pub fn load(
        path: &Path,
        backend: Backend,
        max_tokens: usize,
        temperature: f32,
        reply_prefix: Option<String>,
        scoring: LocalScoring,
    ) -> Result<LocalCoach> {
        let m = crate::loader::load(path).with_context(|| format!("loading the coach model {}", path.display()))?;
        let tok = Tokenizer::new(&m.tokenizer, &m.config)?;
        let model = crate::model::load(&m, backend)?;
        let grammar = match scoring {
            LocalScoring::Sampled => {
                let rx = score_regex(reply_prefix.as_deref().unwrap_or_default(), max_tokens)?;
                Some(Grammars::new(&tok, m.config.vocab_size)?.regex(&rx)?)
            }
            LocalScoring::Expected => None,
        };
        Ok(LocalCoach { model, tok, max_tokens, temperature, reply_prefix, scoring, grammar })
    }

    /// The engine requests for one coach prompt (the reply prefix already fed): one generation, or for an
    /// expected score the two one-token look-ups of the module docs.
    fn requests(&self, messages: &[ChatMessage]) -> Result<Vec<Request>> {
        let mut ids = self.tok.encode_chat(messages)?;
        ids.extend(self.tok.encode(self.prefix(), false)?);
        let limit = self.model.config().max_position_embeddings;
        ensure!(ids.len() + 1 < limit, "coach prompt of {} tokens exceeds the coach model's {limit}", ids.len());
        let stop_ids = self.tok.stop_ids().to_vec();
        Ok(match self.scoring {
            LocalScoring::Sampled => vec![Request {
                max_new_tokens: self.max_tokens.min(limit - ids.len()),
                prompt: ids,
                stop_ids,
                samples: vec![SamplingParams { temperature: self.temperature, ..SamplingParams::default() }],
            }],
            LocalScoring::Expected => {
                let look = SamplingParams { top_logprobs: MAX_TOP_LOGPROBS, ..SamplingParams::default() };
                let one = [ids.as_slice(), &self.tok.encode("1", false)?].concat();
                [ids, one]
                    .into_iter()
                    .map(|prompt| Request { prompt, max_new_tokens: 1, stop_ids: Vec::new(), samples: vec![look] })
                    .collect()
            }
        })
    }

    fn prefix(&self) -> &str {
        self.reply_prefix.as_deref().unwrap_or_default()
    }

    /// The reply for one prompt from its generations (as `requests` made them).
    fn reply(&self, generated: &[Generation]) -> Result<String> {
        match self.scoring {
            LocalScoring::Sampled => Ok(self.prefix().to_string() + &self.tok.decode(&generated[0].tokens, true)?),
            LocalScoring::Expected => {
                let texts = |g: &Generation| -> Result<Vec<(String, f32)>> {
                    let top = g.top_logprobs.first().context("the look-up returned no alternatives")?;
                    top.iter().map(|&(id, lp)| Ok((self.tok.decode(&[id], false)?, lp))).collect()
                };
                let (score, p) = expected_score(&texts(&generated[0])?, &texts(&generated[1])?)?;
                let shown: Vec<String> = p.iter().enumerate().map(|(s, p)| format!("{s}: {p:.3}")).collect();
                Ok(format!(
                    "Expected score over the coach's probabilities of the scores ({}).\n{}: {score:.3}",
                    shown.join(", "),
                    super::SCORE_KEY
                ))
            }
        }
    }
}

/// The regular expression a sampled reply (after `prefix`) must match to end in a valid score line within
/// `max_tokens` tokens.
fn score_regex(prefix: &str, max_tokens: usize) -> Result<String> {
    let key = format!("{}:", super::SCORE_KEY);
    let score = "(10|[0-9])";
    if prefix.ends_with(&key) {
        return Ok(format!(" {score}"));
    }
    if prefix.ends_with(&format!("{key} ")) {
        return Ok(score.to_string());
    }
    ensure!(
        max_tokens >= SCORE_LINE_TOKENS,
        "coach.max_tokens = {max_tokens} leaves no room for the score line (at least {SCORE_LINE_TOKENS}, or a \
         reply_prefix ending in `{key}`)"
    );
    Ok(format!("(?s:.{{0,{}}}?)\n{key} {score}", max_tokens - SCORE_LINE_TOKENS))
}

/// The expected score and the normalised probability of each score 0..10, from the alternatives (decoded
/// text, log-prob) of the first token after the prefix and of the token after a "1" (module docs).
pub fn expected_score(first: &[(String, f32)], after_one: &[(String, f32)]) -> Result<(f64, [f64; 11])> {
    let digits = |alts: &[(String, f32)]| -> [f64; 10] {
        let mut p = [0.0; 10];
        for (text, lp) in alts {
            let t = text.trim_start();
            if t.len() == 1 && t.as_bytes()[0].is_ascii_digit() {
                p[(t.as_bytes()[0] - b'0') as usize] += (*lp as f64).exp();
            }
        }
        p
    };
    let (first, next) = (digits(first), digits(after_one));
    let mut p = [0.0; 11];
    p[..10].copy_from_slice(&first);
    p[1] = first[1] * (1.0 - next.iter().sum::<f64>()).max(0.0);
    p[10] = first[1] * next[0];
    let mass: f64 = p.iter().sum();
    if mass < MIN_SCORE_MASS {
        bail!("the coach puts {mass:.3} of its probability on the scores 0-10 (at least {MIN_SCORE_MASS} is needed)");
    }
    p.iter_mut().for_each(|x| *x /= mass);
    Ok((p.iter().enumerate().map(|(s, x)| s as f64 * x).sum(), p))
}

impl CoachBackend for LocalCoach {
    /// The coach model runs on the cores the rollout uses, and scores best as one batch.
    fn overlaps_rollout(&self) -> bool {
        false
    }

    fn complete(&self, messages: &[ChatMessage]) -> Result<String> {
        let req: &CoachRequest = &CoachRequest::default();
        self.reply_all(&[(req, messages)], 1).pop().expect("one reply").0
    }

    fn reply_all(
        &self,
        exchanges: &[(&CoachRequest, &[ChatMessage])],
        _concurrency: usize,
    ) -> Vec<(Result<String>, f64)> {
        let start = Instant::now();
        // Prompts that cannot be built fail alone; the rest run as one batch.
        let built: Vec<Result<Vec<Request>>> = exchanges.iter().map(|(_, m)| self.requests(m)).collect();
        let ok: Vec<Request> = built.iter().filter_map(|r| r.as_ref().ok()).flatten().cloned().collect();
        let constraints: Vec<Constraints> =
            ok.iter().map(|_| self.grammar.iter().map(|g| Some(g.constraint())).collect()).collect();
        let generated: Result<Vec<Generation>> =
            generate_batch_constrained(self.model.as_ref(), ok, constraints, &EngineConfig::default())
                .map(|g| g.into_iter().map(|mut samples| samples.remove(0)).collect());
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let mut next = 0;
        built
            .into_iter()
            .map(|b| {
                let reply = b.and_then(|reqs| {
                    let all = generated.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                    next += reqs.len();
                    self.reply(&all[next - reqs.len()..next])
                });
                (reply, ms)
            })
            .collect()
    }
}

//! One choice as the engine generates it, for either endpoint: its text decoded, cut before the first stop
//! string, and handed out piece by piece as soon as each piece is settled, each piece with the tokens (and
//! their log-probs, when asked for) that lie within it. The tail that may still change is held back: an
//! incomplete UTF-8 character (shown as U+FFFD until its last byte comes) or the start of a stop string.
//! Dropping a [`Completion`] (its handler was dropped: the client went away) or reaching a stop string
//! closes its channel, and the engine aborts the sequence at its next token.
//!
//! An echoed prompt ([`Echo`], completions only) is the choice's first piece, with its own tokens; the
//! generated tokens' offsets then count from the start of the echoed text.
use super::error::ApiError;
use super::logprobs::{Aligner, Token};
use super::request::Job;
use super::Served;
use crate::engine::{FinishReason, Update};
use crate::sample::SamplingParams;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Result};
use tokio::sync::mpsc::UnboundedReceiver;

/// A prompt as it is echoed before its choices' text: its text and, when log-probs are asked for, its
/// tokens placed in it.
#[derive(Clone, Default)]
pub struct Echo {
    pub text: String,
    pub tokens: Vec<Token>,
}

/// What a choice produced next.
pub struct Piece {
    pub text: String,
    /// The tokens that lie within the text handed out so far and were not handed out before (none unless
    /// log-probs are asked for).
    pub tokens: Vec<Token>,
}

/// A finished choice.
pub struct Outcome {
    /// The choice's prompt (an index into the job's prompts).
    pub prompt: usize,
    /// The echoed prompt, then the generated text.
    pub text: String,
    pub finish: &'static str,
    /// Tokens generated up to the end of the text, the stop token included.
    pub completion_tokens: usize,
    /// The text's tokens with their log-probabilities, when asked for.
    pub logprobs: Option<Vec<Token>>,
}

pub struct Completion {
    prompt: usize,
    updates: UnboundedReceiver<Update>,
    text: Text,
    /// Per content token: its log-prob and alternatives.
    scores: Vec<(f32, Vec<(u32, f32)>)>,
    aligner: Aligner,
    echo: Option<Echo>,
    /// Characters of the echoed text, which the generated tokens' offsets count from.
    echoed_chars: usize,
    /// Everything handed out so far: the outcome's text and tokens.
    all_text: String,
    all_tokens: Vec<Token>,
    finish: FinishReason,
    /// Generation is over (the rest of the text may still be to hand out).
    over: bool,
    /// The last piece is out.
    done: bool,
    want_logprobs: bool,
}

impl Completion {
    /// Submits `job` to the engine: each prompt's `n` samples share its prefill, and sample j draws with the
    /// job's seed + j. `echoes` (one per prompt, or none) are the prompts to echo. The choices come out
    /// prompt-major, as the job numbers them.
    pub fn start(served: &Served, job: &Job, echoes: Vec<Echo>) -> Result<Vec<Completion>> {
        ensure!(echoes.is_empty() || echoes.len() == job.prompts.len(), "an echo per prompt or none");
        let mut echoes = echoes.into_iter();
        let mut out = Vec::with_capacity(job.choices());
        for (p, prompt) in job.prompts.iter().enumerate() {
            let echo = echoes.next();
            let samples = (0..job.n as u64)
                .map(|j| SamplingParams { seed: job.params.seed.wrapping_add(j), ..job.params })
                .collect();
            let req = crate::engine::Request {
                prompt: prompt.ids.clone(),
                max_new_tokens: prompt.budget,
                stop_ids: served.tok.stop_ids().to_vec(),
                samples,
            };
            let constraints = match &job.grammar {
                Some(g) => (0..job.n).map(|_| Some(g.constraint())).collect(),
                None => Vec::new(),
            };
            let updates = served.engine.submit_constrained(req, constraints)?;
            ensure!(updates.len() == job.n, "the engine returned {} sequences for {} samples", updates.len(), job.n);
            out.extend(updates.into_iter().map(|updates| Completion {
                prompt: p,
                updates,
                text: Text::new(job.stops.clone()),
                scores: Vec::new(),
                aligner: Aligner::default(),
                echoed_chars: echo.as_ref().map_or(0, |e| e.text.chars().count()),
                echo: echo.clone(),
                all_text: String::new(),
                all_tokens: Vec::new(),
                finish: FinishReason::Length,
                over: false,
                done: false,
                want_logprobs: job.logprobs,
            }));
        }
        Ok(out)
    }

    /// The next piece, or None once the whole text is out.
    pub async fn next(&mut self, tok: &Tokenizer) -> Result<Option<Piece>> {
        if let Some(echo) = self.echo.take() {
            return Ok(Some(self.hand_out(echo.text, echo.tokens)));
        }
        while !self.over {
            match self.updates.recv().await {
                Some(Update::Token { id, logprob, top }) => {
                    let content = self.text.ids.len();
                    let piece = self.text.push(tok, id)?;
                    if self.text.ids.len() > content {
                        self.scores.push((logprob, top));
                    }
                    if self.text.stopped {
                        self.end();
                    }
                    if !piece.is_empty() {
                        let tokens = self.place(tok, false);
                        return Ok(Some(self.hand_out(piece, tokens)));
                    }
                }
                Some(Update::Done(g)) => {
                    self.finish = g.finish;
                    self.end();
                }
                Some(Update::Failed(e)) => bail!("{e}"),
                None => bail!("the engine stopped"),
            }
        }
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let rest = self.text.take(self.text.text.len());
        let tokens = self.place(tok, true);
        Ok((!rest.is_empty() || !tokens.is_empty()).then(|| self.hand_out(rest, tokens)))
    }

    /// The content tokens not handed out yet that lie within the settled text (with `last`, all of them).
    fn place(&mut self, tok: &Tokenizer, last: bool) -> Vec<Token> {
        if !self.want_logprobs {
            return Vec::new();
        }
        let placed = self.aligner.place(tok, &self.text.ids, &self.text.text, self.text.sent, last);
        placed
            .into_iter()
            .map(|p| {
                let (logprob, top) = self.scores[p.index].clone();
                let id = self.text.ids[p.index];
                Token {
                    id,
                    logprob: Some(logprob),
                    top,
                    bytes: p.bytes,
                    text: p.text,
                    offset: self.echoed_chars + p.offset,
                }
            })
            .collect()
    }

    fn hand_out(&mut self, text: String, tokens: Vec<Token>) -> Piece {
        self.all_text.push_str(&text);
        self.all_tokens.extend(tokens.iter().cloned());
        Piece { text, tokens }
    }

    /// Ends generation: the engine aborts the sequence at its next token if it is still running.
    fn end(&mut self) {
        self.over = true;
        self.updates.close();
    }

    /// Generates the whole text.
    pub async fn run(mut self, tok: &Tokenizer) -> Result<Outcome> {
        while self.next(tok).await?.is_some() {}
        Ok(self.outcome())
    }

    /// Every completion of `job` run to its end, for a non-streamed answer, each counted in the metrics.
    pub async fn run_all(served: &Served, job: &Job, echoes: Vec<Echo>) -> Result<Vec<Outcome>, ApiError> {
        let generated = async {
            let runs = Completion::start(served, job, echoes)?.into_iter().map(|c| c.run(&served.tok));
            futures_util::future::try_join_all(runs).await
        };
        let outs = generated.await.map_err(|e| ApiError::generation(&e))?;
        for out in &outs {
            served.metrics.completed(job.prompts[out.prompt].ids.len(), out.completion_tokens);
        }
        Ok(outs)
    }

    /// What was generated, once [`Completion::next`] returned None.
    pub fn outcome(self) -> Outcome {
        let stopped = self.text.stopped || self.finish == FinishReason::Stop;
        Outcome {
            prompt: self.prompt,
            finish: if stopped { "stop" } else { "length" },
            completion_tokens: self.text.generated,
            logprobs: self.want_logprobs.then_some(self.all_tokens),
            text: self.all_text,
        }
    }
}

/// The text of the tokens so far and how much of it was handed out.
struct Text {
    stops: Vec<String>,
    /// The content's tokens: those generated before the stop token or up to the stop string's end.
    ids: Vec<u32>,
    /// Tokens generated up to the end of the text, the stop token included.
    generated: usize,
    text: String,
    /// Bytes of `text` handed out.
    sent: usize,
    /// A stop string ended the text; later tokens are ignored.
    stopped: bool,
}

impl Text {
    fn new(stops: Vec<String>) -> Text {
        Text { stops, ids: Vec::new(), generated: 0, text: String::new(), sent: 0, stopped: false }
    }

    /// Adds a generated token; returns the text it settled.
    fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.generated += 1;
        if tok.stop_ids().contains(&id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        self.text = tok.decode(&self.ids, true)?;
        if let Some(at) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(at);
            self.stopped = true;
            return Ok(self.take(at));
        }
        let partial_stop = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter_map(|k| s.get(..k)).filter(|p| self.text.ends_with(p)).map(str::len))
            .max()
            .unwrap_or(0);
        let partial_char = self.text.len() - self.text.trim_end_matches('\u{FFFD}').len();
        Ok(self.take(self.text.len() - partial_stop.max(partial_char)))
    }

    /// The text from what was handed out up to byte `end` (nothing if that is not a settled piece).
    fn take(&mut self, end: usize) -> String {
        match self.text.get(self.sent..end) {
            Some(piece) => {
                self.sent = end;
                piece.to_owned()
            }
            None => String::new(),
        }
    }
}

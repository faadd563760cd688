//! One sequence's completion as the engine generates it: its text decoded, cut before the first stop
//! string, and handed out piece by piece as soon as each piece is settled. The tail that may still change is
//! held back: an incomplete UTF-8 character (shown as U+FFFD until its last byte comes) or the start of a
//! stop string. Dropping a [`Completion`] (its handler was dropped: the client went away) or reaching a stop
//! string closes its channel, and the engine aborts the sequence at its next token.
use super::chat::Job;
use super::Served;
use crate::engine::{FinishReason, Update};
use crate::sample::SamplingParams;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Result};
use tokio::sync::mpsc::UnboundedReceiver;

/// A finished completion.
pub struct Outcome {
    pub text: String,
    pub finish: &'static str,
    /// Tokens generated up to the end of the text, the stop token included.
    pub completion_tokens: usize,
    /// The content's tokens with their log-probabilities, when asked for.
    pub logprobs: Option<Vec<(u32, f32)>>,
}

pub struct Completion {
    updates: UnboundedReceiver<Update>,
    text: Text,
    logprobs: Vec<f32>,
    finish: FinishReason,
    /// Generation is over (the rest of the text may still be to hand out).
    over: bool,
    want_logprobs: bool,
}

impl Completion {
    /// Submits `job` to the engine: its `n` samples share the prompt's prefill, and sample i draws with
    /// the job's seed + i.
    pub fn start(served: &Served, job: &Job) -> Result<Vec<Completion>> {
        let samples =
            (0..job.n as u64).map(|i| SamplingParams { seed: job.params.seed.wrapping_add(i), ..job.params }).collect();
        let req = crate::engine::Request {
            prompt: job.prompt.clone(),
            max_new_tokens: job.budget,
            stop_ids: served.tok.stop_ids().to_vec(),
            samples,
        };
        let updates = served.engine.submit(req)?;
        ensure!(updates.len() == job.n, "the engine returned {} sequences for {} samples", updates.len(), job.n);
        Ok(updates
            .into_iter()
            .map(|updates| Completion {
                updates,
                text: Text::new(job.stops.clone()),
                logprobs: Vec::new(),
                finish: FinishReason::Length,
                over: false,
                want_logprobs: job.logprobs,
            })
            .collect())
    }

    /// The next settled piece of text, or None once the whole text is out.
    pub async fn next(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        while !self.over {
            match self.updates.recv().await {
                Some(Update::Token { id, logprob }) => {
                    self.logprobs.push(logprob);
                    let piece = self.text.push(tok, id)?;
                    if self.text.stopped {
                        self.end();
                    }
                    if !piece.is_empty() {
                        return Ok(Some(piece));
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
        let rest = self.text.take(self.text.text.len());
        Ok((!rest.is_empty()).then_some(rest))
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

    /// What was generated, once [`Completion::next`] returned None.
    pub fn outcome(self) -> Outcome {
        let stopped = self.text.stopped || self.finish == FinishReason::Stop;
        let logprobs = self.want_logprobs.then(|| self.text.ids.iter().copied().zip(self.logprobs).collect());
        Outcome {
            finish: if stopped { "stop" } else { "length" },
            completion_tokens: self.text.generated,
            logprobs,
            text: self.text.text,
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

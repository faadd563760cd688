//! A coach run by the engine itself: a local model (any file `mappa::loader::load` reads) answers the coach
//! prompt greedily (or at `temperature`), so a run needs no API key and no network. A step's actions are
//! answered as one continuous batch of the engine ([`CoachBackend::reply_all`]).
//!
//! `reply_prefix` starts the coach's reply with fixed text the model continues, e.g. `PROCESS_SCORE:` for
//! a model too small to follow the answer format by itself. The prefix is part of the returned reply, so
//! the strict parser still checks the whole answer, and the exchange is logged as it happened.
use super::{CoachBackend, CoachRequest};
use crate::engine::{generate_batch, EngineConfig, Request};
use crate::model::{Backend, Model};
use crate::sample::SamplingParams;
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

pub struct LocalCoach {
    model: Box<dyn Model>,
    tok: Tokenizer,
    max_tokens: usize,
    temperature: f32,
    reply_prefix: Option<String>,
}

impl LocalCoach {
    pub fn load(
        path: &Path,
        backend: Backend,
        max_tokens: usize,
        temperature: f32,
        reply_prefix: Option<String>,
    ) -> Result<LocalCoach> {
        let m = crate::loader::load(path).with_context(|| format!("loading the coach model {}", path.display()))?;
        let tok = Tokenizer::new(&m.tokenizer, &m.config)?;
        Ok(LocalCoach { model: crate::model::load(&m, backend)?, tok, max_tokens, temperature, reply_prefix })
    }

    /// The engine request for one coach prompt (the reply prefix already fed).
    fn request(&self, messages: &[ChatMessage]) -> Result<Request> {
        let mut ids = self.tok.encode_chat(messages)?;
        ids.extend(self.tok.encode(self.prefix(), false)?);
        let limit = self.model.config().max_position_embeddings;
        anyhow::ensure!(ids.len() < limit, "coach prompt of {} tokens exceeds the coach model's {limit}", ids.len());
        Ok(Request {
            max_new_tokens: self.max_tokens.min(limit - ids.len()),
            prompt: ids,
            stop_ids: self.tok.stop_ids().to_vec(),
            samples: vec![SamplingParams { temperature: self.temperature, ..SamplingParams::default() }],
        })
    }

    fn prefix(&self) -> &str {
        self.reply_prefix.as_deref().unwrap_or_default()
    }
}

impl CoachBackend for LocalCoach {
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
        let built: Vec<Result<Request>> = exchanges.iter().map(|(_, m)| self.request(m)).collect();
        let ok: Vec<Request> = built.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        let mut generated = match generate_batch(self.model.as_ref(), ok, &EngineConfig::default()) {
            Ok(g) => g.into_iter().map(|mut samples| Ok(samples.remove(0))).collect::<Vec<_>>().into_iter(),
            Err(e) => {
                let msg = format!("{e:#}");
                let n = built.iter().filter(|r| r.is_ok()).count();
                (0..n).map(|_| Err(anyhow::anyhow!("{msg}"))).collect::<Vec<_>>().into_iter()
            }
        };
        let ms = start.elapsed().as_secs_f64() * 1e3;
        built
            .into_iter()
            .map(|b| {
                let reply = b.and_then(|_| {
                    let g = generated.next().expect("one generation per built request")?;
                    Ok(self.prefix().to_string() + &self.tok.decode(&g.tokens, true)?)
                });
                (reply, ms)
            })
            .collect()
    }
}

//! A coach run by the engine itself: a local model (any file `mappa::loader::load` reads) answers the coach
//! prompt greedily (or at `temperature`), so a run needs no API key and no network.
//!
//! `reply_prefix` starts the coach's reply with fixed text the model continues, e.g. `PROCESS_SCORE:` for
//! a model too small to follow the answer format by itself. The prefix is part of the returned reply, so
//! the strict parser still checks the whole answer, and the exchange is logged as it happened.
use super::CoachBackend;
use crate::cpu::CpuModel;
use crate::generate::generate;
use crate::sample::SamplingParams;
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{Context, Result};
use std::path::Path;

pub struct LocalCoach {
    model: CpuModel,
    tok: Tokenizer,
    max_tokens: usize,
    temperature: f32,
    reply_prefix: Option<String>,
}

impl LocalCoach {
    pub fn load(path: &Path, max_tokens: usize, temperature: f32, reply_prefix: Option<String>) -> Result<LocalCoach> {
        let m = crate::loader::load(path).with_context(|| format!("loading the coach model {}", path.display()))?;
        let tok = Tokenizer::new(&m.tokenizer, &m.config)?;
        Ok(LocalCoach { model: CpuModel::new(&m)?, tok, max_tokens, temperature, reply_prefix })
    }
}

impl CoachBackend for LocalCoach {
    fn complete(&self, messages: &[ChatMessage]) -> Result<String> {
        let mut ids = self.tok.encode_chat(messages)?;
        let prefix = self.reply_prefix.clone().unwrap_or_default();
        ids.extend(self.tok.encode(&prefix, false)?);
        let limit = self.model.config.max_position_embeddings;
        anyhow::ensure!(ids.len() < limit, "coach prompt of {} tokens exceeds the coach model's {limit}", ids.len());
        let max_new = self.max_tokens.min(limit - ids.len());
        let params = SamplingParams { temperature: self.temperature, ..SamplingParams::default() };
        let g = generate(&self.model, &ids, max_new, params, self.tok.stop_ids(), |_| Ok(()))?;
        Ok(prefix + &self.tok.decode(&g.tokens, true)?)
    }
}
